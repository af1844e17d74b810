//! The in-process revocation set (`session.revocation = "memory"`), optionally kept in a
//! file across restarts (`session.revocation_file`).
//!
//! Readers (every request with a session) take one shard's read lock per lookup, and only
//! when the set is not empty; writers (sign-outs, logouts, replay sets: rare) are
//! serialized by one mutex that also guards the file.
//!
//! # The file
//! A text journal, one entry per line, appended at each insert; revocations (sign-outs,
//! provider logouts, subjects) are `fsync`ed at once, replay-set entries (a DPoP proof's
//! `jti`, one a request) are only written: they survive a restart or a crash of the
//! process (the kernel holds the write), and only a crash of the machine within a proof's
//! `iat` window could lose one. An `fsync` per DPoP request would bound DPoP traffic by
//! the disk.
//! ```text
//! portcullis revocations v1
//! G <global not-before>
//! <tag><32 hex digits> <until> <not-before>
//! ```
//! (`tag`: `s` session id, `p` provider session, `u` subject, `j` replay set.) At start it
//! is read back (expired entries dropped) and rewritten compacted; the minute sweep
//! compacts it again once it holds mostly dead lines. A file that exists but cannot be read
//! or parsed fails closed: the global not-before time is set to the start time (every
//! session must log in again), and the error is logged. A failed write is logged: the
//! entry holds in this process but a restart would forget it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use super::{hex, log_raised, unhex, unix, Entry, Facts, FirstUse, Key, Reason, Recorded, Verdict};

const SHARDS: usize = 16;
const HEADER: &str = "portcullis revocations v1";

/// Keys are random ids or SHA-256 digests: their first bytes are already a good hash (and
/// nobody can choose them to collide).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.0 ^= u64::from(i);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: Key,
    kind: Entry,
}

impl std::hash::Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.key[..8]);
        state.write_u8(self.kind.tag() as u8);
    }
}

#[derive(Debug, Clone, Copy)]
struct Value {
    /// Unix seconds after which the entry is dropped.
    until: u64,
    /// Subjects: sessions issued at or before this are refused. 0 for other kinds.
    not_before: u64,
}

type Map = HashMap<Slot, Value, BuildHasherDefault<KeyHasher>>;

/// The in-process set.
pub struct MemorySet {
    shards: Box<[RwLock<Map>]>,
    /// Entries in all shards (exact: only writers change it, one at a time).
    len: AtomicUsize,
    /// The global not-before time (0: never raised).
    global: AtomicU64,
    capacity: AtomicUsize,
    writer: Mutex<Journal>,
}

/// The file, when configured.
struct Journal {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    /// Lines appended since the last rewrite (for compaction).
    appended: usize,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl MemorySet {
    /// An empty set, or the one `file` holds (see the module doc for a damaged file).
    pub fn open(file: Option<&Path>, capacity: usize, now: SystemTime) -> MemorySet {
        let set = MemorySet {
            shards: (0..SHARDS).map(|_| RwLock::new(Map::default())).collect(),
            len: AtomicUsize::new(0),
            global: AtomicU64::new(0),
            capacity: AtomicUsize::new(capacity.max(1)),
            writer: Mutex::new(Journal {
                path: None,
                file: None,
                appended: 0,
            }),
        };
        set.set_file(file, now);
        set
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, key: &Key) -> &RwLock<Map> {
        &self.shards[usize::from(key[15]) % SHARDS]
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), SeqCst);
    }

    /// Uses `file` from now on: its entries (if it exists) join the set, and it is
    /// rewritten with everything the set holds. `None`: no file any more.
    pub fn set_file(&self, file: Option<&Path>, now: SystemTime) {
        let mut j = self.lock_writer();
        if j.path.as_deref() == file && (file.is_none() || j.file.is_some()) {
            return;
        }
        j.file = None;
        j.path = file.map(Path::to_path_buf);
        j.appended = 0;
        let Some(path) = file else { return };
        let now = unix(now);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Err(line) = self.load(&text, now) {
                    self.fail_closed(now);
                    tracing::error!(
                        file = %path.display(),
                        line,
                        "revocation file damaged: every session issued until now must log in again"
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                self.fail_closed(now);
                tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "revocation file unreadable: every session issued until now must log in again"
                );
            }
        }
        self.rewrite(&mut j, now);
    }

    /// Reads a journal into the set; `Err(line number)` at the first line it cannot parse
    /// (the lines before it are kept).
    fn load(&self, text: &str, now: u64) -> Result<(), usize> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, HEADER)) => {}
            None => return Ok(()),
            Some(_) => return Err(1),
        }
        for (i, line) in lines {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            let mut f = line.split(' ');
            let (Some(head), Some(a), b, None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(n);
            };
            let a: u64 = a.parse().map_err(|_| n)?;
            if head == "G" {
                if b.is_some() {
                    return Err(n);
                }
                self.global.fetch_max(a, SeqCst);
                continue;
            }
            let b: u64 = b.ok_or(n)?.parse().map_err(|_| n)?;
            let mut chars = head.chars();
            let kind = chars.next().and_then(Entry::from_tag).ok_or(n)?;
            let key = unhex(chars.as_str()).ok_or(n)?;
            if a > now {
                self.put(kind, &key, b, a);
            }
        }
        Ok(())
    }

    /// Sessions (and tokens) issued until `now` are refused: every entry is redundant.
    fn fail_closed(&self, now: u64) {
        self.global.fetch_max(now.max(1), SeqCst);
        for s in self.shards.iter() {
            write(s).clear();
        }
        self.len.store(0, SeqCst);
    }

    /// Writes the whole set to the file (a temporary file renamed over it) and reopens it
    /// for appending.
    fn rewrite(&self, j: &mut Journal, now: u64) {
        j.file = None;
        j.appended = 0;
        let Some(path) = j.path.clone() else { return };
        let mut text = String::with_capacity(64 + 60 * self.len.load(SeqCst));
        text.push_str(HEADER);
        text.push('\n');
        let g = self.global.load(SeqCst);
        if g != 0 {
            text.push_str(&format!("G {g}\n"));
        }
        for s in self.shards.iter() {
            for (slot, v) in read(s).iter().filter(|(_, v)| v.until > now) {
                text.push_str(&line(slot, v));
            }
        }
        let tmp = path.with_extension("tmp");
        let result = (|| -> std::io::Result<std::fs::File> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::OpenOptions::new().append(true).open(&path)
        })();
        match result {
            Ok(f) => j.file = Some(f),
            Err(e) => tracing::error!(
                file = %path.display(),
                error = %e,
                "cannot write the revocation file: revocations hold in this process, a restart would forget them"
            ),
        }
    }

    /// Appends the line `text` makes to the revocation file, `fsync`ed when `durable`
    /// (see the module's doc). Without a file nothing is formatted (a DPoP request makes
    /// one entry: its line is not made for nothing).
    fn append(&self, j: &mut Journal, durable: bool, text: impl FnOnce() -> String) {
        if j.file.is_none() && j.path.is_none() {
            return;
        }
        let text = text();
        let Some(f) = j.file.as_mut() else {
            if let Some(path) = &j.path {
                tracing::error!(file = %path.display(), "revocation file not open: this revocation would not survive a restart");
            }
            return;
        };
        let r = f
            .write_all(text.as_bytes())
            .and_then(|()| if durable { f.sync_data() } else { Ok(()) });
        match r {
            Ok(()) => j.appended += 1,
            Err(e) => tracing::error!(
                error = %e,
                "cannot append to the revocation file: this revocation would not survive a restart"
            ),
        }
    }

    fn get(&self, kind: Entry, key: &Key, now: u64) -> Option<Value> {
        let v = *read(self.shard(key)).get(&Slot { key: *key, kind })?;
        (v.until > now).then_some(v)
    }

    /// Inserts or merges (later `until`, later not-before); `true` when it was new.
    fn put(&self, kind: Entry, key: &Key, not_before: u64, until: u64) -> bool {
        let mut shard = write(self.shard(key));
        match shard.get_mut(&Slot { key: *key, kind }) {
            Some(v) => {
                v.until = v.until.max(until);
                v.not_before = v.not_before.max(not_before);
                false
            }
            None => {
                shard.insert(Slot { key: *key, kind }, Value { until, not_before });
                self.len.fetch_add(1, SeqCst);
                true
            }
        }
    }

    /// The verdict on a session; cheap while the set is empty.
    #[inline]
    pub fn check(&self, f: &Facts, now: u64) -> Verdict {
        let g = self.global.load(SeqCst);
        if g != 0 && f.issued_at <= g {
            return Verdict::Revoked(Reason::Global);
        }
        if self.len.load(SeqCst) == 0 {
            return Verdict::Live;
        }
        self.check_entries(f, now)
    }

    #[inline(never)]
    fn check_entries(&self, f: &Facts, now: u64) -> Verdict {
        if self.get(Entry::Session, &f.keys.session, now).is_some() {
            return Verdict::Revoked(Reason::SignedOut);
        }
        if let Some(sid) = &f.keys.provider_sid {
            if self.get(Entry::ProviderSession, sid, now).is_some() {
                return Verdict::Revoked(Reason::ProviderLogout);
            }
        }
        if let Some(v) = self.get(Entry::Subject, &f.keys.subject, now) {
            if f.issued_at <= v.not_before {
                return Verdict::Revoked(Reason::Subject);
            }
        }
        Verdict::Live
    }

    /// Makes room for one more entry: drops expired ones, else fails closed. `true` when
    /// the global time had to be raised.
    fn make_room(&self, j: &mut Journal, now: u64) -> bool {
        let cap = self.capacity.load(SeqCst);
        if self.len.load(SeqCst) < cap {
            return false;
        }
        self.drop_expired(now);
        if self.len.load(SeqCst) < cap {
            self.rewrite(j, now);
            return false;
        }
        self.fail_closed(now);
        log_raised(cap, now, "memory");
        self.rewrite(j, now);
        true
    }

    pub(super) fn insert(
        &self,
        kind: Entry,
        key: &Key,
        not_before: u64,
        until: u64,
        now: u64,
    ) -> Recorded {
        if until <= now {
            return Recorded::Stored; // nothing it could still refuse
        }
        let mut j = self.lock_writer();
        let exists = read(self.shard(key))
            .get(&Slot { key: *key, kind })
            .is_some_and(|v| v.until > now);
        if !exists && self.make_room(&mut j, now) {
            // Every session issued until now is refused: this one included.
            return Recorded::Raised;
        }
        self.put(kind, key, not_before, until);
        self.append(&mut j, kind != Entry::Jti, || {
            line(&Slot { key: *key, kind }, &Value { until, not_before })
        });
        Recorded::Stored
    }

    pub(super) fn first_use(&self, key: &Key, issued_at: u64, until: u64, now: u64) -> FirstUse {
        let mut j = self.lock_writer();
        let g = self.global.load(SeqCst);
        if g != 0 && issued_at <= g {
            return FirstUse::IssuedBeforeReset;
        }
        if self.get(Entry::Jti, key, now).is_some() {
            return FirstUse::Replayed;
        }
        if until <= now {
            return FirstUse::Fresh;
        }
        let raised = self.make_room(&mut j, now);
        self.put(Entry::Jti, key, 0, until);
        self.append(&mut j, false, || {
            line(
                &Slot {
                    key: *key,
                    kind: Entry::Jti,
                },
                &Value {
                    until,
                    not_before: 0,
                },
            )
        });
        if raised {
            FirstUse::FreshAfterReset
        } else {
            FirstUse::Fresh
        }
    }

    fn drop_expired(&self, now: u64) -> usize {
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut m = write(s);
            let before = m.len();
            m.retain(|_, v| v.until > now);
            dropped += before - m.len();
        }
        self.len.fetch_sub(dropped, SeqCst);
        dropped
    }

    /// Drops expired entries; compacts the file once most of its lines are dead.
    pub fn sweep(&self, now: u64) {
        let mut j = self.lock_writer();
        self.drop_expired(now);
        if j.path.is_some() && j.appended > 2 * self.len.load(SeqCst) + 1000 {
            self.rewrite(&mut j, now);
        }
    }

    /// (entries, global not-before time).
    pub fn stats(&self) -> (usize, u64) {
        (self.len.load(SeqCst), self.global.load(SeqCst))
    }
}

fn line(slot: &Slot, v: &Value) -> String {
    format!(
        "{}{} {} {}\n",
        slot.kind.tag(),
        hex(&slot.key),
        v.until,
        v.not_before
    )
}
