//! A FUSE file system that can lose exactly what was not fsynced (the LazyFS idea).
//!
//! A broker's process can be killed with SIGKILL, but the kernel's page cache survives it:
//! every byte it wrote is still there when it restarts, so a plain kill never tests what a
//! power loss does to a log that was acknowledged before it was flushed. `LazyFs` sits between
//! the process and a backing directory. Writes go through to the backing files at once (reads
//! see them, as they would see the page cache), but until a file is fsynced its changes are
//! remembered as *pending*: the length the file had when it was last synced and the original
//! bytes of any synced region that was overwritten. [`LazyFsMount::lose_unsynced`] rolls every
//! pending change back, so after it each file holds exactly what had been fsynced — no more
//! (nothing unsynced survives) and no less (nothing synced is lost). Call it after the process
//! using the mount has been killed, then restart the process on the same mount.
//!
//! What it does not simulate: metadata operations (create, rename, unlink, mkdir) are durable
//! at once, as on a journalling file system that commits them in order with the data (ext4
//! `data=ordered`); torn writes within one `write` call; and a real power loss of the test
//! machine (fsync is passed through to the backing file so latencies stay honest).

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attributes and entries are not cached by the kernel: after [`LazyFsMount::lose_unsynced`]
/// shrinks files behind its back, a cached size would be wrong.
const TTL: Duration = Duration::ZERO;

/// Changes to one file since its last fsync.
#[derive(Debug)]
struct Pending {
    /// The backing file, held open so it can be rolled back whatever it is called by then.
    file: File,
    /// Its path when last changed (for reports).
    path: PathBuf,
    /// The file's length at its last fsync (or when it was first changed after one).
    synced_len: u64,
    /// Original contents of synced regions that were overwritten or truncated away, in the
    /// order they were saved; restoring them newest first leaves the oldest (synced) bytes.
    originals: Vec<(u64, Vec<u8>)>,
}

/// What [`LazyFsMount::lose_unsynced`] threw away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LossReport {
    /// Files whose unsynced changes were rolled back (paths relative to the mount).
    pub files: Vec<PathBuf>,
    /// Bytes of unsynced appends cut off.
    pub bytes_truncated: u64,
    /// Bytes of synced data that had been overwritten and were restored.
    pub bytes_restored: u64,
}

#[derive(Debug)]
struct State {
    backing: PathBuf,
    /// Inode number → path relative to the backing root ("" is the root).
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Open file handles → (relative path, backing file).
    handles: HashMap<u64, (PathBuf, File)>,
    next_handle: u64,
    /// Backing inode number → changes since the file's last fsync. Keyed by the backing
    /// file, not its name: renames (checkpoints) and unlinked-but-open files need no care.
    pending: HashMap<u64, Pending>,
}

impl State {
    fn new(backing: PathBuf) -> Self {
        let mut s = State {
            backing,
            paths: HashMap::new(),
            inodes: HashMap::new(),
            next_inode: INodeNo::ROOT.0 + 1,
            handles: HashMap::new(),
            next_handle: 1,
            pending: HashMap::new(),
        };
        s.paths.insert(INodeNo::ROOT.0, PathBuf::new());
        s.inodes.insert(PathBuf::new(), INodeNo::ROOT.0);
        s
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let name_path = Path::new(name);
        if name_path.components().count() != 1 || name == ".." || name == "." {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel(parent)?.join(name))
    }

    fn real(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn inode_of(&mut self, rel: &Path) -> u64 {
        if let Some(i) = self.inodes.get(rel) {
            return *i;
        }
        let i = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(rel.to_path_buf(), i);
        self.paths.insert(i, rel.to_path_buf());
        i
    }

    fn attr(&mut self, rel: &Path) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(self.real(rel)).map_err(Errno::from)?;
        let ino = self.inode_of(rel);
        Ok(file_attr(ino, &md))
    }

    /// Remember what a change to `file` (at `rel`) in `[offset, offset + len)` destroys,
    /// before it happens.
    fn before_write(&mut self, rel: &Path, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let md = file.metadata()?;
        let pending = match self.pending.entry(md.ino()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Pending {
                file: file.try_clone()?,
                path: rel.to_path_buf(),
                synced_len: md.len(),
                originals: Vec::new(),
            }),
        };
        pending.path = rel.to_path_buf();
        // Synced bytes at or beyond the current length were cut by a truncation, which saved
        // them already; only the synced bytes still in the file can be destroyed now.
        let end = (offset + len).min(pending.synced_len).min(md.len());
        if offset < end {
            let mut old = vec![0; (end - offset) as usize];
            file.read_exact_at(&mut old, offset)?;
            pending.originals.push((offset, old));
        }
        Ok(())
    }

    /// Truncate `file` to `new_len`, remembering what that destroys.
    fn truncate(&mut self, rel: &Path, file: &File, new_len: u64) -> io::Result<()> {
        let current = file.metadata()?.len();
        self.before_write(
            rel,
            file,
            new_len.min(current),
            current.saturating_sub(new_len),
        )?;
        file.set_len(new_len)
    }

    fn synced(&mut self, file: &File) -> io::Result<()> {
        self.pending.remove(&file.metadata()?.ino());
        Ok(())
    }

    /// A backing file is about to disappear (unlink, or replaced by a rename): its inode
    /// number may be reused by a new file, which must not inherit its bookkeeping.
    fn drop_pending_at(&mut self, rel: &Path) {
        if let Ok(md) = fs::symlink_metadata(self.real(rel)) {
            if md.is_file() && md.nlink() <= 1 {
                self.pending.remove(&md.ino());
            }
        }
    }

    /// Move every record under `from` to `to` (a rename of a file or a directory).
    fn moved(&mut self, from: &Path, to: &Path) {
        let retarget = |p: &Path| -> Option<PathBuf> {
            p.strip_prefix(from).ok().map(|rest| {
                if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                }
            })
        };
        // The replaced target (if any) is gone.
        self.forget_path(to);
        let moved: Vec<(PathBuf, u64, PathBuf)> = self
            .inodes
            .iter()
            .filter_map(|(p, i)| retarget(p).map(|n| (p.clone(), *i, n)))
            .collect();
        for (old, i, new) in moved {
            self.inodes.remove(&old);
            self.paths.insert(i, new.clone());
            self.inodes.insert(new, i);
        }
        for (rel, _) in self.handles.values_mut() {
            if let Some(n) = retarget(rel) {
                *rel = n;
            }
        }
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(i) = self.inodes.remove(rel) {
            self.paths.remove(&i);
        }
    }

    fn lose_unsynced(&mut self) -> io::Result<LossReport> {
        let mut report = LossReport::default();
        let mut pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        pending.sort_by(|a, b| a.path.cmp(&b.path));
        for p in pending {
            let len = p.file.metadata()?.len();
            for (offset, bytes) in p.originals.iter().rev() {
                p.file.write_all_at(bytes, *offset)?;
                report.bytes_restored += bytes.len() as u64;
            }
            p.file.set_len(p.synced_len)?;
            p.file.sync_all()?;
            report.bytes_truncated += len.saturating_sub(p.synced_len);
            report.files.push(p.path);
        }
        Ok(report)
    }
}

fn file_attr(ino: u64, md: &fs::Metadata) -> FileAttr {
    let time = |secs: i64, nsecs: i64| {
        if secs >= 0 {
            UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
        } else {
            UNIX_EPOCH
        }
    };
    let kind = if md.is_dir() {
        FileType::Directory
    } else if md.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: md.len(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

/// The file system itself, as the FUSE session sees it.
struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in this file; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        match s.child(parent, name).and_then(|rel| s.attr(&rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut s = self.state();
        match s.rel(ino).and_then(|rel| s.attr(&rel)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let result = (|| -> Result<FileAttr, Errno> {
            let rel = s.rel(ino)?;
            let path = s.real(&rel);
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(errno)?;
            }
            if let Some(size) = size {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(errno)?;
                s.truncate(&rel, &file, size).map_err(errno)?;
            }
            s.attr(&rel)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let result = s.child(parent, name).and_then(|rel| {
            let path = s.real(&rel);
            fs::create_dir(&path).map_err(errno)?;
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777));
            s.attr(&rel)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let result = s.child(parent, name).and_then(|rel| {
            s.drop_pending_at(&rel);
            fs::remove_file(s.real(&rel)).map_err(errno)?;
            s.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let result = s.child(parent, name).and_then(|rel| {
            fs::remove_dir(s.real(&rel)).map_err(errno)?;
            s.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_EXCHANGE / RENAME_NOREPLACE: not used by the systems under test.
            reply.error(Errno::EINVAL);
            return;
        }
        let mut s = self.state();
        let result = (|| -> Result<(), Errno> {
            let from = s.child(parent, name)?;
            let to = s.child(newparent, newname)?;
            s.drop_pending_at(&to);
            fs::rename(s.real(&from), s.real(&to)).map_err(errno)?;
            s.moved(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        let result = (|| -> Result<u64, Errno> {
            let rel = s.rel(ino)?;
            let file = open_backing(&s.real(&rel), flags.0, false)?;
            if flags.0 & libc::O_TRUNC != 0 {
                // With FUSE_ATOMIC_O_TRUNC the kernel leaves truncation to open.
                s.truncate(&rel, &file, 0).map_err(errno)?;
            }
            let fh = s.next_handle;
            s.next_handle += 1;
            s.handles.insert(fh, (rel, file));
            Ok(fh)
        })();
        match result {
            // No FOPEN_KEEP_CACHE: the kernel drops its page cache on every open, so a
            // process restarted after a loss reads the rolled-back files.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let result = (|| -> Result<(FileAttr, u64), Errno> {
            let rel = s.child(parent, name)?;
            let path = s.real(&rel);
            let existed = path.exists();
            let file = open_backing(&path, flags, true)?;
            if !existed {
                // A new file has no history, even if its backing inode number is reused.
                s.synced(&file).map_err(errno)?;
            } else if flags & libc::O_TRUNC != 0 {
                s.truncate(&rel, &file, 0).map_err(errno)?;
            }
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777));
            let attr = s.attr(&rel)?;
            let fh = s.next_handle;
            s.next_handle += 1;
            s.handles.insert(fh, (rel, file));
            Ok((attr, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        let Some((_, file)) = s.handles.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let mut buf = vec![0; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(errno(e));
                    return;
                }
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let result = (|| -> Result<u32, Errno> {
            let (rel, file) = s.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            let (rel, file) = (rel.clone(), file.try_clone().map_err(errno)?);
            // O_APPEND: the kernel passes the offset it computed from the size we reported.
            let offset = if flags.0 & libc::O_APPEND != 0 {
                file.metadata().map_err(errno)?.len()
            } else {
                offset
            };
            s.before_write(&rel, &file, offset, data.len() as u64)
                .map_err(errno)?;
            file.write_all_at(data, offset).map_err(errno)?;
            Ok(data.len() as u32)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not fsync(2): nothing becomes durable here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let result = (|| -> Result<(), Errno> {
            let (_, file) = s.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            let file = file.try_clone().map_err(errno)?;
            if datasync {
                file.sync_data().map_err(errno)?;
            } else {
                file.sync_all().map_err(errno)?;
            }
            s.synced(&file).map_err(errno)?;
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = self.state();
        match s.rel(ino) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        let result = (|| -> Result<Vec<(u64, FileType, std::ffi::OsString)>, Errno> {
            let rel = s.rel(ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let mut names: Vec<_> = fs::read_dir(s.real(&rel))
                .map_err(errno)?
                .filter_map(|e| e.ok())
                .collect();
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                let child = s.inode_of(&rel.join(e.file_name()));
                entries.push((child, kind, e.file_name()));
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is durable at once in this file system (see the module comment).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.state();
        let path =
            std::ffi::CString::new(s.backing.as_os_str().as_encoded_bytes()).unwrap_or_default();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a properly sized out-parameter.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            reply.error(Errno::EIO);
            return;
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// Open a backing file for reading and writing whatever the caller asked for: the kernel has
/// already checked the caller's permissions (`default_permissions`), and the bookkeeping must
/// read the bytes a write destroys. O_DIRECT and O_SYNC are dropped (the second would make
/// writes durable behind the bookkeeping's back), and O_APPEND is applied by [`Filesystem::write`].
fn open_backing(path: &Path, flags: i32, create: bool) -> Result<File, Errno> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create(true);
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        }
    }
    let extra = flags
        & !(libc::O_ACCMODE
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_TRUNC
            | libc::O_DIRECT
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_APPEND);
    o.custom_flags(extra);
    o.open(path).map_err(errno)
}

/// A mounted [`LazyFs`]. Unmounts when dropped.
pub struct LazyFsMount {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    /// Detaches the mount if the harness is stopped by a signal (Drop would not run).
    _on_signal: crate::cleanup::Guard,
}

impl LazyFsMount {
    /// Mount a LazyFs at `mountpoint` (an existing empty directory) over the directory
    /// `backing`. Needs `/dev/fuse` and the right to mount (root, or fusermount3).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyFsMount> {
        let backing = fs::canonicalize(backing)?;
        let state = Arc::new(Mutex::new(State::new(backing.clone())));
        let fs = LazyFs {
            state: state.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("kcheck-lazyfs:{}", backing.display())),
            MountOption::Subtype("kcheck-lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        config.acl = fuser::SessionACL::All;
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        let detach = mountpoint.to_path_buf();
        Ok(LazyFsMount {
            state,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
            _on_signal: crate::cleanup::on_signal(move || crate::cleanup::detach_mount(detach)),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Roll every file back to what was last fsynced (see the module comment). Call it
    /// once the processes writing through the mount are dead.
    pub fn lose_unsynced(&self) -> io::Result<LossReport> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.lose_unsynced()
    }

    /// Files changed since their last fsync: what a crash now would roll back.
    pub fn unsynced_files(&self) -> Vec<PathBuf> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut files: Vec<PathBuf> = s.pending.values().map(|p| p.path.clone()).collect();
        files.sort();
        files
    }

    /// Unmount now (also done on drop), reporting failures.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for LazyFsMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                // Busy (a file still open): detach it instead, so no test or run leaves a
                // dead mount behind.
                eprintln!(
                    "kcheck lazyfs: unmounting {} failed: {e}; detaching it",
                    self.mountpoint.display()
                );
                crate::cleanup::detach_mount(self.mountpoint.clone());
            }
        }
    }
}

/// Whether this process can mount FUSE file systems here (for tests and `kcheck test` to say
/// why the lose-unsynced nemesis is unavailable).
pub fn available() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("mounting FUSE without fusermount3 needs root".into());
    }
    Ok(())
}
