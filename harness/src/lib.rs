//! kcheck's Jepsen-style harness: fault injection, workloads, histories and checkers.
