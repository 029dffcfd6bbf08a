//! The snapshot file: a magic header, then every key-value pair of the
//! state store in ascending order, each as two big-endian u32 lengths and
//! the bytes. The descriptor that raft carries in `Snapshot.data` names the
//! file and holds its size and CRC32; both are checked on receipt and again
//! whenever the file is read back.

use std::io::Read;

use ha_core::StorageError;

use super::files::NewFile;

/// One key-value pair of the state store.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

pub(crate) const MAGIC: &[u8; 8] = b"HASNAP01";
/// Sanity bound on one key or value in a snapshot file.
const MAX_FIELD: u32 = 1 << 30;

/// What raft carries in `Snapshot.data`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct SnapshotDescriptor {
    #[prost(uint64, tag = "1")]
    pub(crate) index: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) term: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) size: u64,
    #[prost(uint32, tag = "4")]
    pub(crate) crc32: u32,
    /// Unique per build on the member that built it.
    #[prost(uint64, tag = "5")]
    pub(crate) id: u64,
    /// The member that built it.
    #[prost(uint64, tag = "6")]
    pub(crate) builder: u64,
}

impl SnapshotDescriptor {
    pub(crate) fn file_name(&self, kind: &str) -> String {
        format!(
            "{kind}-{}-{}-{}-{}.snap",
            self.index, self.term, self.builder, self.id
        )
    }
}

/// The pending-install marker stored in the log store.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InstallMarker {
    #[prost(message, optional, tag = "1")]
    pub(crate) descriptor: Option<SnapshotDescriptor>,
    #[prost(string, tag = "2")]
    pub(crate) file: String,
}

/// Writes pairs into a new file, counting size and CRC.
pub(crate) struct PairWriter {
    file: NewFile,
    size: u64,
    crc: crc32fast::Hasher,
}

impl PairWriter {
    pub(crate) fn new(file: NewFile) -> Result<Self, StorageError> {
        let mut w = PairWriter {
            file,
            size: 0,
            crc: crc32fast::Hasher::new(),
        };
        w.raw(MAGIC)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.crc.update(bytes);
        self.size += bytes.len() as u64;
        self.file.write_all(bytes)
    }

    pub(crate) fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let too_big = |n: usize| u32::try_from(n).ok().filter(|&n| n <= MAX_FIELD).is_none();
        if too_big(key.len()) || too_big(value.len()) {
            return Err(StorageError::corrupt(
                "snapshot",
                "a key or value above 1 GiB cannot be snapshotted",
            ));
        }
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(key.len() as u32).to_be_bytes());
        head[4..].copy_from_slice(&(value.len() as u32).to_be_bytes());
        self.raw(&head)?;
        self.raw(key)?;
        self.raw(value)
    }

    /// Finishes the file; returns its size and CRC32.
    pub(crate) fn finish(self) -> Result<(u64, u32), StorageError> {
        let (size, crc) = (self.size, self.crc.finalize());
        self.file.finish()?;
        Ok((size, crc))
    }
}

/// Reads the pairs of a snapshot file back, checking its size and CRC
/// against the descriptor at the end.
pub(crate) struct PairReader {
    input: Box<dyn Read + Send>,
    expected: (u64, u32),
    read: u64,
    crc: crc32fast::Hasher,
    done: bool,
    what: String,
}

impl PairReader {
    pub(crate) fn new(
        input: Box<dyn Read + Send>,
        descriptor: &SnapshotDescriptor,
        what: String,
    ) -> Result<Self, StorageError> {
        let mut r = PairReader {
            input,
            expected: (descriptor.size, descriptor.crc32),
            read: 0,
            crc: crc32fast::Hasher::new(),
            done: false,
            what,
        };
        let mut magic = [0u8; 8];
        if !r.fill(&mut magic)? || &magic != MAGIC {
            return Err(r.corrupt("not a snapshot file (bad magic)"));
        }
        Ok(r)
    }

    fn corrupt(&self, detail: impl Into<String>) -> StorageError {
        StorageError::corrupt(self.what.clone(), detail.into())
    }

    /// Fills `buf` completely; false at a clean end of file (nothing read).
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, StorageError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .input
                .read(&mut buf[got..])
                .map_err(|e| StorageError::io("read a snapshot file", e))?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(self.corrupt("truncated in the middle of a record"));
            }
            got += n;
        }
        self.crc.update(buf);
        self.read += buf.len() as u64;
        Ok(true)
    }

    fn next_pair(&mut self) -> Result<Option<Pair>, StorageError> {
        let mut head = [0u8; 8];
        if !self.fill(&mut head)? {
            let crc = std::mem::take(&mut self.crc).finalize();
            if (self.read, crc) != self.expected {
                return Err(self.corrupt(format!(
                    "{} bytes with CRC {crc:#010x}, expected {} bytes with CRC {:#010x}",
                    self.read, self.expected.0, self.expected.1
                )));
            }
            return Ok(None);
        }
        let klen = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let vlen = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if klen > MAX_FIELD || vlen > MAX_FIELD {
            return Err(self.corrupt("a record length is out of bounds"));
        }
        if self.read + u64::from(klen) + u64::from(vlen) > self.expected.0 {
            return Err(self.corrupt("a record runs past the snapshot's size"));
        }
        let mut key = vec![0u8; klen as usize];
        let mut value = vec![0u8; vlen as usize];
        if !self.fill(&mut key)? && klen > 0 {
            return Err(self.corrupt("truncated in the middle of a record"));
        }
        if !self.fill(&mut value)? && vlen > 0 {
            return Err(self.corrupt("truncated in the middle of a record"));
        }
        Ok(Some((key, value)))
    }
}

impl Iterator for PairReader {
    type Item = Result<Pair, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_pair() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
