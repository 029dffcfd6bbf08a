//! Opening one RocksDB instance safely, and turning RocksDB's errors into
//! [`StorageError`]s.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ha_core::StorageError;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode, ErrorKind,
    Options, WriteOptions,
};

use super::codec::{FORMAT_VERSION, check_format, encode_format};
use super::config::{Compression, StorageConfig};
use super::env::RocksEnv;

/// Which of a member's two databases, and where: named in every error.
#[derive(Clone, Debug)]
pub(crate) struct DbName {
    kind: &'static str,
    path: PathBuf,
}

impl DbName {
    pub(crate) fn new(kind: &'static str, path: &Path) -> Self {
        DbName {
            kind,
            path: path.to_path_buf(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Names a record of this database in an error.
    pub(crate) fn record(&self, record: impl fmt::Display) -> String {
        format!("{record} in {self}")
    }

    /// Maps a RocksDB error during `op`: damaged data is
    /// [`StorageError::Corrupt`], a device or file-system failure
    /// [`StorageError::Io`], anything else [`StorageError::Other`].
    pub(crate) fn error(&self, op: &'static str, error: rocksdb::Error) -> StorageError {
        match error.kind() {
            ErrorKind::Corruption => StorageError::corrupt(self.to_string(), error.into_string()),
            ErrorKind::IOError => {
                StorageError::io(op, io::Error::other(format!("{self}: {error}")))
            }
            _ => StorageError::Other(Arc::new(BackendError {
                op,
                db: self.to_string(),
                source: error,
            })),
        }
    }
}

impl fmt::Display for DbName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} at {}", self.kind, self.path.display())
    }
}

/// A RocksDB error that is neither corruption nor I/O.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {db}: {source}")]
struct BackendError {
    op: &'static str,
    db: String,
    #[source]
    source: rocksdb::Error,
}

/// Options shared by both databases.
pub(crate) fn db_options(config: &StorageConfig, env: &RocksEnv) -> Options {
    let mut options = Options::default();
    options.set_env(env.env());
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(env.cache());
    table.set_bloom_filter(10.0, false);
    options.set_block_based_table_factory(&table);
    options.set_compression_type(match config.compression {
        Compression::None => DBCompressionType::None,
        Compression::Lz4 => DBCompressionType::Lz4,
        Compression::Zstd => DBCompressionType::Zstd,
    });
    // `validate` bounds these to what `usize` and `c_int` hold; the
    // fallbacks only keep the conversions total.
    options.set_write_buffer_size(usize::try_from(config.write_buffer_bytes).unwrap_or(64 << 20));
    options.set_max_background_jobs(i32::try_from(config.max_background_jobs).unwrap_or(2));
    // After a power failure, recover up to the first damaged WAL record: a
    // torn tail is what an unsynced write leaves, and everything synced
    // lies before it. (`AbsoluteConsistency` would refuse to start after
    // every ordinary crash.)
    options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    // A WAL file that disappeared is reported on open, not skipped.
    options.set_track_and_verify_wals_in_manifest(true);
    options.set_paranoid_checks(true);
    // RocksDB's own info log: keep a few, bounded.
    options.set_keep_log_file_num(4);
    options.set_max_log_file_size(16 << 20);
    options
}

/// Whether `path` holds a database, decided before RocksDB is asked: a
/// directory with table or WAL files but no `CURRENT` file is a damaged
/// database, and creating a new one over it would lose its data silently.
///
/// # Errors
///
/// [`StorageError::Corrupt`] for such a directory, [`StorageError::Io`] when
/// it cannot be read.
fn existing_database(name: &DbName) -> Result<bool, StorageError> {
    let dir = match fs::read_dir(name.path()) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageError::io("read a database directory", e)),
    };
    let mut data_file = None;
    for file in dir {
        let file = file.map_err(|e| StorageError::io("read a database directory", e))?;
        let file_name = file.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name == "CURRENT" {
            check_manifest(name)?;
            return Ok(true);
        }
        // Only table files and WAL files (`NNNNNN.log`; the info log is
        // `LOG`) hold data. A crash while RocksDB created the database can
        // leave other files, such as a MANIFEST, behind but no data.
        if data_file.is_none() && (file_name.ends_with(".sst") || file_name.ends_with(".log")) {
            data_file = Some(file_name.into_owned());
        }
    }
    match data_file {
        Some(file) => Err(StorageError::corrupt(
            name.to_string(),
            format!(
                "it holds {file} but no CURRENT file; refusing to create a new database over it"
            ),
        )),
        None => Ok(false),
    }
}

/// Checks that the MANIFEST file which `CURRENT` names exists: RocksDB
/// would report a missing one as a mere I/O error.
fn check_manifest(name: &DbName) -> Result<(), StorageError> {
    let current = fs::read_to_string(name.path().join("CURRENT"))
        .map_err(|e| StorageError::io("read the CURRENT file", e))?;
    let manifest = current.trim_end();
    let named = !manifest.is_empty() && !manifest.contains(['/', '\\']);
    if !named || !name.path().join(manifest).is_file() {
        return Err(StorageError::corrupt(
            name.to_string(),
            format!("its CURRENT file names {manifest:?}, which is missing"),
        ));
    }
    Ok(())
}

/// Opens (or creates, when `path` holds no database) a RocksDB instance
/// with the column families `cfs` (besides the default one).
pub(crate) fn open_db(
    name: &DbName,
    mut options: Options,
    cfs: &[&str],
) -> Result<DB, StorageError> {
    let exists = existing_database(name)?;
    if !exists {
        // RocksDB creates the database's own directory, not its parents.
        fs::create_dir_all(name.path())
            .map_err(|e| StorageError::io("create a database directory", e))?;
    }
    options.create_if_missing(!exists);
    options.create_missing_column_families(true);
    let descriptors = std::iter::once(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
        .chain(cfs.iter().copied())
        .map(|cf| ColumnFamilyDescriptor::new(cf, options.clone()));
    DB::open_cf_descriptors(&options, name.path(), descriptors).map_err(|e| name.error("open", e))
}

/// True when the column family `cf` holds no key.
fn is_empty(db: &DB, name: &DbName, cf: &str) -> Result<bool, StorageError> {
    let mut iter = db.raw_iterator_cf(column_family(db, name, cf)?);
    iter.seek_to_first();
    let empty = !iter.valid();
    iter.status().map_err(|e| name.error("scan", e))?;
    Ok(empty)
}

/// The handle of a column family that [`open_db`] opened.
pub(crate) fn column_family<'d>(
    db: &'d DB,
    name: &DbName,
    cf: &str,
) -> Result<&'d rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(cf).ok_or_else(|| {
        StorageError::corrupt(name.to_string(), format!("column family {cf} is missing"))
    })
}

/// Checks the format record at `key` in `cf`, or writes it (synced) into a
/// database whose column family `data_cf` holds nothing yet.
///
/// # Errors
///
/// [`StorageError::UnknownFormat`] for a newer format;
/// [`StorageError::Corrupt`] for a damaged record, or a missing one in a
/// database that holds data.
pub(crate) fn ensure_format(
    db: &DB,
    name: &DbName,
    cf: &str,
    key: &[u8],
    data_cf: &str,
) -> Result<(), StorageError> {
    let handle = column_family(db, name, cf)?;
    let what = || name.record("the format record");
    match db
        .get_cf(handle, key)
        .map_err(|e| name.error("read the format record", e))?
    {
        Some(value) => check_format(key, &value, &what).map(|_| ()),
        None if is_empty(db, name, data_cf)? => {
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.put_cf_opt(handle, key, encode_format(key, FORMAT_VERSION), &sync)
                .map_err(|e| name.error("write the format record", e))?;
            if cf != data_cf {
                // A column family that is never written again must not
                // keep the first WAL file alive with an unflushed memtable.
                db.flush_cf(handle)
                    .map_err(|e| name.error("flush the format record", e))?;
            }
            Ok(())
        }
        None => Err(StorageError::corrupt(
            what(),
            "missing, but the database holds data",
        )),
    }
}

/// Flushes the memtables on a clean close, so that the data of a closed
/// database lives in table files the MANIFEST lists, and a WAL file lost
/// or deleted afterwards loses nothing. (After a crash the live WAL holds
/// synced writes that RocksDB cannot tell are missing if it disappears:
/// it tracks only closed WAL files.)
pub(crate) fn flush_on_close(db: &DB) {
    // A failed flush loses nothing: the WAL still holds the data.
    let _ = db.flush();
}
