//! Fixed-capacity inline vectors for model states: no heap allocation per state, and hashing
//! and equality over the used elements only, so a state is a few hundred bytes that copy and
//! hash quickly (the checker clones and hashes millions of them).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};

/// A vector of at most `N` elements stored inline. Unused slots are kept at `T::default()`.
#[derive(Clone, Copy)]
pub struct InlineVec<T: Copy + Default, const N: usize> {
    len: u8,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> InlineVec<T, N> {
    pub fn new() -> Self {
        InlineVec {
            len: 0,
            items: [T::default(); N],
        }
    }

    /// Append; panics when full, which in a model means a bound was set larger than the
    /// state representation supports (the bounds' `max` prevents it).
    pub fn push(&mut self, item: T) {
        assert!((self.len as usize) < N, "InlineVec capacity {N} exceeded");
        self.items[self.len as usize] = item;
        self.len += 1;
    }

    pub fn truncate(&mut self, len: usize) {
        while self.len as usize > len {
            self.len -= 1;
            self.items[self.len as usize] = T::default();
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut out = Self::new();
        for item in self.iter().filter(|i| keep(i)) {
            out.push(*item);
        }
        *self = out;
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub fn sort_unstable(&mut self)
    where
        T: Ord,
    {
        self.deref_mut().sort_unstable();
    }
}

impl<T: Copy + Default, const N: usize> Default for InlineVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> Deref for InlineVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items[..self.len as usize]
    }
}

impl<T: Copy + Default, const N: usize> DerefMut for InlineVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items[..self.len as usize]
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for InlineVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.deref() == other.deref()
    }
}
impl<T: Copy + Default + Eq, const N: usize> Eq for InlineVec<T, N> {}

impl<T: Copy + Default + Hash, const N: usize> Hash for InlineVec<T, N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.deref().hash(state)
    }
}

impl<T: Copy + Default + PartialOrd, const N: usize> PartialOrd for InlineVec<T, N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.deref().partial_cmp(other.deref())
    }
}
impl<T: Copy + Default + Ord, const N: usize> Ord for InlineVec<T, N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.deref().cmp(other.deref())
    }
}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for InlineVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for InlineVec<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v = Self::new();
        for item in iter {
            v.push(item);
        }
        v
    }
}

impl<T: Copy + Default, const N: usize> From<&[T]> for InlineVec<T, N> {
    fn from(items: &[T]) -> Self {
        items.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of<T: Hash>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn equality_and_hash_ignore_unused_slots() {
        let mut a: InlineVec<u8, 4> = [1, 2, 3].as_slice().into();
        a.truncate(1);
        let b: InlineVec<u8, 4> = [1].as_slice().into();
        assert_eq!(a, b);
        assert_eq!(hash_of(&a), hash_of(&b));
        a.push(9);
        assert_eq!(&a[..], &[1, 9]);
        a.retain(|x| *x > 1);
        assert_eq!(&a[..], &[9]);
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn overflow_is_loud() {
        let mut a: InlineVec<u8, 1> = InlineVec::new();
        a.push(1);
        a.push(2);
    }
}

/// A set of small ids (brokers, consumers) as a bit set in one byte: ISR, ELR, replica sets,
/// group membership. `PREFIX` is the letter ids print with (`b0` for a broker, `c0` for a
/// consumer), so one type serves every model while traces stay readable.
#[derive(
    Clone, Copy, Default, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct IdSet<const PREFIX: char>(pub u8);

impl<const PREFIX: char> IdSet<PREFIX> {
    /// The set with these bits (bit `i` = id `i`).
    pub const fn from_bits(bits: u8) -> Self {
        IdSet(bits)
    }
    /// Ids `0..n`.
    pub fn all(n: usize) -> Self {
        IdSet(((1u16 << n) - 1) as u8)
    }
    pub fn single(id: u8) -> Self {
        IdSet(1 << id)
    }
    pub fn contains(self, id: u8) -> bool {
        self.0 & (1 << id) != 0
    }
    pub fn with(self, id: u8) -> Self {
        IdSet(self.0 | (1 << id))
    }
    pub fn without(self, id: u8) -> Self {
        IdSet(self.0 & !(1 << id))
    }
    pub fn union(self, o: Self) -> Self {
        IdSet(self.0 | o.0)
    }
    pub fn intersection(self, o: Self) -> Self {
        IdSet(self.0 & o.0)
    }
    /// The ids of `self` that are not in `o`.
    pub fn difference(self, o: Self) -> Self {
        IdSet(self.0 & !o.0)
    }
    pub fn is_subset(self, o: Self) -> bool {
        self.0 & !o.0 == 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The ids of `self` for which `keep` holds.
    pub fn filter(self, keep: impl Fn(u8) -> bool) -> Self {
        IdSet(
            self.iter()
                .filter(|id| keep(*id))
                .fold(0, |acc, id| acc | 1 << id),
        )
    }
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..8u8).filter(move |id| self.contains(*id))
    }
    /// Relabel: id `i` becomes `perm[i]` (symmetry reduction).
    pub fn permute(self, perm: &[u8]) -> Self {
        IdSet(
            self.iter()
                .fold(0, |acc, id| acc | (1 << perm[id as usize])),
        )
    }
}

impl<const PREFIX: char> fmt::Debug for IdSet<PREFIX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.iter().map(|id| format!("{PREFIX}{id}")).collect();
        write!(f, "{{{}}}", ids.join(","))
    }
}
