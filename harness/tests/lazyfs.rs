//! LazyFs loses exactly what was not fsynced: appends after the last fsync are cut, synced
//! bytes that were overwritten come back, files never synced end up empty, and synced files
//! (including the write-tmp-fsync-rename pattern of checkpoints) are untouched.

use kcheck_harness::lazyfs::{self, LazyFsMount};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

/// FUSE is optional locally but mandatory in CI (as the external clients are).
fn mount() -> Option<(tempfile::TempDir, LazyFsMount)> {
    if let Err(why) = lazyfs::available() {
        if std::env::var_os("CI").is_some() {
            panic!("LazyFs is required in CI: {why}");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let m = LazyFsMount::mount(&backing, &mnt).expect("mount LazyFs");
    Some((dir, m))
}

#[test]
fn loses_exactly_the_unsynced_writes() {
    let Some((_dir, m)) = mount() else { return };
    let mnt = m.mountpoint().to_path_buf();
    fs::create_dir(mnt.join("t-0")).unwrap();

    // A log segment: 100 synced bytes, then an unsynced append and an unsynced overwrite.
    let seg = mnt.join("t-0/00000000000000000000.log");
    let mut f = File::create(&seg).unwrap();
    let synced: Vec<u8> = (0..100u8).collect();
    f.write_all(&synced).unwrap();
    f.sync_data().unwrap();
    f.write_all(&[0xAA; 50]).unwrap();
    f.write_all_at(&[0xBB; 10], 10).unwrap();
    drop(f);

    // A file never synced at all.
    fs::write(mnt.join("t-0/leader-epoch-checkpoint.tmp"), b"never synced").unwrap();

    // A checkpoint written the durable way: tmp, fsync, rename over the old one.
    let ckpt = mnt.join("recovery-point-offset-checkpoint");
    fs::write(&ckpt, b"old").unwrap();
    File::open(&ckpt).unwrap().sync_all().unwrap();
    let tmp = mnt.join("recovery-point-offset-checkpoint.tmp");
    let mut t = File::create(&tmp).unwrap();
    t.write_all(b"0\n1\nt 0 100\n").unwrap();
    t.sync_all().unwrap();
    drop(t);
    fs::rename(&tmp, &ckpt).unwrap();

    // Before the loss everything written is visible, as in the page cache.
    assert_eq!(fs::metadata(&seg).unwrap().len(), 150);
    assert_eq!(m.unsynced_files().len(), 2, "{:?}", m.unsynced_files());

    let report = m.lose_unsynced().unwrap();
    assert_eq!(report.bytes_truncated, 50 + "never synced".len() as u64);
    assert_eq!(report.bytes_restored, 10);
    assert_eq!(report.files.len(), 2);

    assert_eq!(
        fs::read(&seg).unwrap(),
        synced,
        "exactly the synced prefix remains"
    );
    assert_eq!(
        fs::read(mnt.join("t-0/leader-epoch-checkpoint.tmp")).unwrap(),
        b"",
        "a never-synced file keeps none of its data"
    );
    assert_eq!(fs::read(&ckpt).unwrap(), b"0\n1\nt 0 100\n");
    assert!(m.unsynced_files().is_empty());

    // Writing on after a loss works and is tracked afresh.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[1, 2, 3]).unwrap();
    drop(f);
    assert_eq!(m.lose_unsynced().unwrap().bytes_truncated, 3);
    assert_eq!(fs::read(&seg).unwrap(), synced);
}

#[test]
fn synced_data_survives_and_truncation_below_the_sync_point_is_undone() {
    let Some((_dir, m)) = mount() else { return };
    let path = m.mountpoint().join("f");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"hello world").unwrap();
    f.sync_all().unwrap();
    // An unsynced truncation (as a log truncation after a diverging epoch) is undone too.
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"hello");
    let report = m.lose_unsynced().unwrap();
    assert_eq!(report.bytes_restored, 6);
    assert_eq!(fs::read(&path).unwrap(), b"hello world");
    // Nothing pending: a second loss changes nothing.
    assert_eq!(m.lose_unsynced().unwrap(), Default::default());
    assert_eq!(fs::read(&path).unwrap(), b"hello world");
}

#[test]
fn reopening_with_o_trunc_and_rewriting_rolls_back_to_the_synced_bytes() {
    // Checkpoints are rewritten in place by some systems (File::create over a synced file).
    let Some((_dir, m)) = mount() else { return };
    let path = m.mountpoint().join("ckpt");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"abcdef").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut f = File::create(&path).unwrap();
    f.write_all(b"XYZXYZXY").unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"XYZXYZXY");
    m.lose_unsynced().unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"abcdef");
}

mod model {
    //! Random sequences of writes, truncations, O_TRUNC reopens and fsyncs against a model
    //! that knows what is durable: after the loss the file is exactly the model's durable
    //! bytes.
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestRunner;

    #[derive(Debug, Clone)]
    enum Op {
        Write { offset: usize, data: Vec<u8> },
        Truncate(usize),
        Reopen,
        Sync,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..40, proptest::collection::vec(any::<u8>(), 1..12))
                .prop_map(|(offset, data)| Op::Write { offset, data }),
            1 => (0usize..40).prop_map(Op::Truncate),
            1 => Just(Op::Reopen),
            2 => Just(Op::Sync),
        ]
    }

    /// One mount for every case, dropped (unmounted) when the test ends: a mount kept in a
    /// static would outlive the process as a dead FUSE mount.
    #[test]
    fn what_survives_is_exactly_what_was_synced() {
        let Some((_dir, m)) = mount() else { return };
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 64,
            ..ProptestConfig::default()
        });
        let cases = (proptest::collection::vec(op(), 1..24), any::<u64>());
        let result = runner.run(&cases, |(ops, case)| {
            let path = m.mountpoint().join(format!("f{case}"));
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            let (mut current, mut durable) = (Vec::<u8>::new(), Vec::<u8>::new());
            file.sync_all().unwrap();
            for op in &ops {
                match op {
                    Op::Write { offset, data } => {
                        file.write_all_at(data, *offset as u64).unwrap();
                        if current.len() < offset + data.len() {
                            current.resize(offset + data.len(), 0);
                        }
                        current[*offset..offset + data.len()].copy_from_slice(data);
                    }
                    Op::Truncate(len) => {
                        file.set_len(*len as u64).unwrap();
                        current.resize(*len, 0);
                    }
                    Op::Reopen => {
                        file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .truncate(true)
                            .open(&path)
                            .unwrap();
                        current.clear();
                    }
                    Op::Sync => {
                        file.sync_data().unwrap();
                        durable = current.clone();
                    }
                }
            }
            prop_assert_eq!(fs::read(&path).unwrap(), current);
            drop(file);
            // Other cases may share the mount but each has its own file; the loss rolls back
            // every file, and every other file is already fully synced or rolled back.
            m.lose_unsynced().unwrap();
            prop_assert_eq!(fs::read(&path).unwrap(), durable);
            fs::remove_file(&path).unwrap();
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
