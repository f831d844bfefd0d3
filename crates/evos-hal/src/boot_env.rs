//! The U-Boot environment, in the on-flash format that U-Boot's `env` code
//! and libubootenv's `fw_printenv`/`fw_setenv` read and write.
//!
//! # Format
//!
//! An environment is a region of fixed size at an offset in a file or block
//! device:
//!
//! ```text
//! single:     | CRC-32 (LE) | data ...                        |
//! redundant:  | CRC-32 (LE) | flags (u8) | data ...           |
//! data:       key=value\0 key=value\0 ... \0  padding
//! ```
//!
//! The CRC is CRC-32/ISO-HDLC (zlib's `crc32`) over the whole data area,
//! padding included, so readers ignore what the padding is; we pad with zeros
//! as U-Boot does (libubootenv leaves whatever its buffer held). Entries are
//! written sorted by key, as both U-Boot and libubootenv do.
//!
//! A redundant environment has two copies of equal size. Each write goes to
//! the copy not in use, with `flags` one more (wrapping) than the copy in use;
//! a reader takes the valid copy with the newer flags (255 → 0 counts as
//! newer; equal flags pick the first). This is the "incremental" flag scheme
//! libubootenv and U-Boot use for files and block devices; raw NOR MTD
//! devices, with their active/obsolete flags and erase cycles, are not
//! supported.
//!
//! # Configuration
//!
//! [`EnvConfig::parse`] reads the `fw_env.config` syntax libubootenv reads:
//! one line per copy, `device offset size [sector-size [sectors]]`, `#`
//! comments. As in libubootenv's `sscanf("%ms %lli %zx ...")`, the offset
//! takes a C integer (`0x` hex, leading `0` octal, else decimal) and the size
//! is always hexadecimal (`0x` optional).
//!
//! The I/O is blocking and small; call it from `spawn_blocking` in async code
//! if a slow device matters.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::{HalError, Result};

/// Where libubootenv takes its lock; sharing it keeps our writes and
/// `fw_setenv`'s from interleaving.
pub const DEFAULT_LOCK_FILE: &str = "/var/lock/fw_printenv.lock";
/// No real environment is this large; it bounds what a config can make us
/// allocate.
const MAX_ENV_SIZE: usize = 16 << 20;

/// One copy of the environment: `size` bytes at `offset` in `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLocation {
    pub path: PathBuf,
    pub offset: u64,
    pub size: usize,
}

impl EnvLocation {
    pub fn new(path: impl Into<PathBuf>, offset: u64, size: usize) -> Self {
        EnvLocation {
            path: path.into(),
            offset,
            size,
        }
    }
}

impl std::fmt::Display for EnvLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{:#x}", self.path.display(), self.offset)
    }
}

/// Where the environment lives: one copy, or a redundant pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvConfig {
    copies: Vec<EnvLocation>,
    /// Taken (best effort, like libubootenv) while reading and writing.
    pub lock_file: Option<PathBuf>,
}

impl EnvConfig {
    /// A single (non-redundant) environment.
    pub fn single(location: EnvLocation) -> Result<Self> {
        Self::new(vec![location])
    }

    /// A redundant pair; both copies must have the same size.
    pub fn redundant(first: EnvLocation, second: EnvLocation) -> Result<Self> {
        Self::new(vec![first, second])
    }

    fn new(copies: Vec<EnvLocation>) -> Result<Self> {
        let redundant = copies.len() == 2;
        for copy in &copies {
            let min = header_len(redundant) + 2;
            if copy.size < min || copy.size > MAX_ENV_SIZE {
                return Err(HalError::BootEnv(format!(
                    "{copy}: size {:#x} is outside {min:#x}..={MAX_ENV_SIZE:#x}",
                    copy.size
                )));
            }
        }
        if let [a, b] = copies.as_slice()
            && a.size != b.size
        {
            return Err(HalError::BootEnv(format!(
                "the copies differ in size: {a} has {:#x}, {b} has {:#x}",
                a.size, b.size
            )));
        }
        Ok(EnvConfig {
            copies,
            lock_file: Some(DEFAULT_LOCK_FILE.into()),
        })
    }

    /// Parse `fw_env.config` text (see the module documentation).
    pub fn parse(text: &str) -> Result<Self> {
        let mut copies = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad =
                |why: String| HalError::BootEnv(format!("fw_env.config line {}: {why}", n + 1));
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [device, offset, size, rest @ ..] = fields.as_slice() else {
                return Err(bad(format!("expected `device offset size`, got `{line}`")));
            };
            let offset = parse_c_integer(offset)
                .ok_or_else(|| bad(format!("offset `{offset}` is not a non-negative integer")))?;
            let size = parse_hex(size)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad(format!("size `{size}` is not a hexadecimal number")))?;
            // Sector size and count only matter for MTD erase blocks.
            if let Some(bad_field) = rest.iter().take(2).find(|f| parse_hex(f).is_none()) {
                return Err(bad(format!("`{bad_field}` is not a hexadecimal number")));
            }
            if copies.len() == 2 {
                return Err(bad("more than two copies".into()));
            }
            copies.push(EnvLocation::new(*device, offset, size));
        }
        if copies.is_empty() {
            return Err(HalError::BootEnv("fw_env.config names no device".into()));
        }
        Self::new(copies)
    }

    /// Read and parse an `fw_env.config` file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| HalError::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text)
    }

    pub fn copies(&self) -> &[EnvLocation] {
        &self.copies
    }

    pub fn is_redundant(&self) -> bool {
        self.copies.len() == 2
    }

    fn size(&self) -> usize {
        self.copies[0].size
    }

    fn lock(&self) -> Option<File> {
        let path = self.lock_file.as_ref()?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path);
        // libubootenv goes on without the lock too (e.g. /var/lock not
        // writable for this user); a missing lock must not stop a write.
        match file.and_then(|f| f.lock().map(|()| f)) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!("boot env: no lock at {}: {e}", path.display());
                None
            }
        }
    }
}

/// What reading one copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStatus {
    /// The CRC matches; `flags` is the redundancy counter (redundant only).
    Valid {
        flags: Option<u8>,
    },
    BadCrc {
        stored: u32,
        computed: u32,
    },
    /// Missing, too short, or the data area is malformed.
    Unreadable(String),
}

impl std::fmt::Display for CopyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyStatus::Valid { flags: Some(n) } => write!(f, "valid (flags {n})"),
            CopyStatus::Valid { flags: None } => write!(f, "valid"),
            CopyStatus::BadCrc { stored, computed } => write!(
                f,
                "CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            CopyStatus::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// A loaded environment. Changes stay in memory until [`BootEnv::commit`].
#[derive(Debug, Clone)]
pub struct BootEnv {
    config: EnvConfig,
    vars: BTreeMap<String, String>,
    /// The copy the variables came from; a redundant commit writes the other.
    current: usize,
    current_flags: u8,
    copies: Vec<CopyStatus>,
}

impl BootEnv {
    /// Read the environment: the single copy, or the newer valid copy of a
    /// redundant pair. Fails when no copy is valid, naming what is wrong with
    /// each; a bad copy next to a good one is logged and visible in
    /// [`BootEnv::copies`].
    pub fn open(config: &EnvConfig) -> Result<BootEnv> {
        let _lock = config.lock();
        let redundant = config.is_redundant();
        let mut found = Vec::new();
        let mut statuses = Vec::new();
        for copy in &config.copies {
            match read_region(copy).and_then(|region| decode(&region, redundant)) {
                Ok((vars, flags)) => {
                    statuses.push(CopyStatus::Valid { flags });
                    found.push(Some((vars, flags.unwrap_or(0))));
                }
                Err(status) => {
                    statuses.push(status);
                    found.push(None);
                }
            }
        }
        let current = match (&found[0], found.get(1)) {
            (Some((_, f0)), Some(Some((_, f1)))) => newer_copy(*f0, *f1),
            (Some(_), _) => 0,
            (None, Some(Some(_))) => 1,
            _ => {
                let why: Vec<String> = config
                    .copies
                    .iter()
                    .zip(&statuses)
                    .map(|(copy, status)| format!("{copy}: {status}"))
                    .collect();
                return Err(HalError::BootEnv(format!(
                    "no valid copy: {}",
                    why.join("; ")
                )));
            }
        };
        for (copy, status) in config.copies.iter().zip(&statuses) {
            if !matches!(status, CopyStatus::Valid { .. }) {
                tracing::warn!("boot env: copy {copy} is {status}; using the other copy");
            }
        }
        let Some((vars, current_flags)) = found.swap_remove(current) else {
            return Err(HalError::BootEnv("internal: chosen copy vanished".into()));
        };
        Ok(BootEnv {
            config: config.clone(),
            vars,
            current,
            current_flags,
            copies: statuses,
        })
    }

    /// An empty environment for `config`, to provision a device or an env
    /// file; nothing is read, and the first commit writes copy 0 (flags 1).
    pub fn empty(config: &EnvConfig) -> BootEnv {
        BootEnv {
            config: config.clone(),
            vars: BTreeMap::new(),
            current: if config.is_redundant() { 1 } else { 0 },
            current_flags: 0,
            copies: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Set `key` to `value`, or delete it with `None`.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        // U-Boot cannot load `=value` or a key containing '=' (its separator).
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(HalError::BootEnv(format!("invalid variable name {key:?}")));
        }
        match value {
            Some(v) if v.contains('\0') => Err(HalError::BootEnv(format!(
                "the value of {key} contains a NUL byte"
            ))),
            Some(v) => {
                self.vars.insert(key.to_owned(), v.to_owned());
                Ok(())
            }
            None => {
                self.vars.remove(key);
                Ok(())
            }
        }
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// What [`BootEnv::open`] found in each copy (empty for [`BootEnv::empty`]).
    pub fn copies(&self) -> &[CopyStatus] {
        &self.copies
    }

    /// The index of the copy the current contents belong to.
    pub fn active_copy(&self) -> usize {
        self.current
    }

    pub fn config(&self) -> &EnvConfig {
        &self.config
    }

    /// Write the environment: the single copy, or the inactive copy of a
    /// redundant pair (which then becomes the active one). A regular file is
    /// replaced atomically (temp file + fsync + rename); a block device is
    /// written in place at the offset and synced.
    pub fn commit(&mut self) -> Result<()> {
        let redundant = self.config.is_redundant();
        let (target, flags) = if redundant {
            (1 - self.current, Some(self.current_flags.wrapping_add(1)))
        } else {
            (0, None)
        };
        let image = encode(&self.vars, self.config.size(), flags)?;
        let _lock = self.config.lock();
        write_region(&self.config.copies[target], &image)?;
        self.current = target;
        self.current_flags = flags.unwrap_or(0);
        Ok(())
    }
}

/// libubootenv's and U-Boot's choice between two valid copies.
fn newer_copy(flags0: u8, flags1: u8) -> usize {
    match (flags0, flags1) {
        (0xFF, 0) => 1,
        (0, 0xFF) => 0,
        (f0, f1) if f1 > f0 => 1,
        _ => 0,
    }
}

fn header_len(redundant: bool) -> usize {
    if redundant { 5 } else { 4 }
}

/// The region image for `vars`: CRC, flags (redundant only), entries, zeros.
pub fn encode(vars: &BTreeMap<String, String>, size: usize, flags: Option<u8>) -> Result<Vec<u8>> {
    let header = header_len(flags.is_some());
    let mut image = Vec::with_capacity(size);
    image.extend_from_slice(&[0; 4]);
    image.extend(flags);
    for (key, value) in vars {
        image.extend_from_slice(key.as_bytes());
        image.push(b'=');
        image.extend_from_slice(value.as_bytes());
        image.push(0);
    }
    image.push(0);
    if image.len() > size {
        return Err(HalError::BootEnv(format!(
            "the variables need {} bytes; the environment holds {}",
            image.len() - header,
            size.saturating_sub(header)
        )));
    }
    image.resize(size, 0);
    let crc = crc32fast::hash(&image[header..]);
    image[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(image)
}

/// Parse a region image into variables and flags, or say why it is invalid.
pub fn decode(
    region: &[u8],
    redundant: bool,
) -> std::result::Result<(BTreeMap<String, String>, Option<u8>), CopyStatus> {
    let header = header_len(redundant);
    if region.len() < header + 1 {
        return Err(CopyStatus::Unreadable(format!(
            "region of {} bytes is too small",
            region.len()
        )));
    }
    let stored = u32::from_le_bytes([region[0], region[1], region[2], region[3]]);
    let data = &region[header..];
    let computed = crc32fast::hash(data);
    if stored != computed {
        return Err(CopyStatus::BadCrc { stored, computed });
    }
    let flags = redundant.then_some(region[4]);
    let mut vars = BTreeMap::new();
    let mut rest = data;
    loop {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(CopyStatus::Unreadable(
                "the variable list has no terminating NUL".into(),
            ));
        };
        if end == 0 {
            break; // the empty string after the last entry
        }
        let entry = String::from_utf8_lossy(&rest[..end]);
        // Like libubootenv: an entry without '=' is skipped, a later
        // duplicate wins.
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                vars.insert(key.to_owned(), value.to_owned());
            }
            _ => tracing::warn!("boot env: skipped malformed entry {entry:?}"),
        }
        rest = &rest[end + 1..];
    }
    Ok((vars, flags))
}

fn read_region(copy: &EnvLocation) -> std::result::Result<Vec<u8>, CopyStatus> {
    let file = File::open(&copy.path).map_err(|e| CopyStatus::Unreadable(e.to_string()))?;
    let mut region = vec![0u8; copy.size];
    file.read_exact_at(&mut region, copy.offset).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            CopyStatus::Unreadable(format!("ends before {:#x}", copy.offset + copy.size as u64))
        } else {
            CopyStatus::Unreadable(e.to_string())
        }
    })?;
    Ok(region)
}

fn write_region(copy: &EnvLocation, image: &[u8]) -> Result<()> {
    let meta = match std::fs::metadata(&copy.path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(HalError::io(format!("checking {}", copy.path.display()), e)),
    };
    match meta {
        None => replace_atomically(&copy.path, copy.offset, image),
        Some(m) if m.is_file() => {
            // Rename onto the symlink's target, not over the symlink.
            let path = std::fs::canonicalize(&copy.path)
                .map_err(|e| HalError::io(format!("resolving {}", copy.path.display()), e))?;
            replace_atomically(&path, copy.offset, image)
        }
        Some(m) if m.file_type().is_block_device() => write_in_place(copy, image),
        Some(_) => Err(HalError::BootEnv(format!(
            "{}: only regular files and block devices are supported (MTD flash needs erase handling)",
            copy.path.display()
        ))),
    }
}

/// Copy the file, patch the region in the copy, fsync, rename over the
/// original and fsync the directory: after a power cut the file is either
/// wholly old or wholly new.
fn replace_atomically(path: &Path, offset: u64, image: &[u8]) -> Result<()> {
    let io = |what: &str, e| HalError::io(format!("{what} {}", path.display()), e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "env".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.evos-tmp-{}", std::process::id()));
    let result = (|| {
        if path.exists() {
            // Also carries over the permission bits.
            std::fs::copy(path, &tmp).map_err(|e| io("copying", e))?;
        } else {
            File::create(&tmp).map_err(|e| io("creating a temp file for", e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(|e| io("opening the temp file for", e))?;
        file.write_all_at(image, offset)
            .map_err(|e| io("writing the temp file for", e))?;
        file.sync_all()
            .map_err(|e| io("syncing the temp file for", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("renaming the temp file onto", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_in_place(copy: &EnvLocation, image: &[u8]) -> Result<()> {
    let io = |what: &str, e| HalError::io(format!("{what} {copy}"), e);
    let _unprotected = EmmcBootUnlock::new(&copy.path);
    let file = OpenOptions::new()
        .write(true)
        .open(&copy.path)
        .map_err(|e| io("opening", e))?;
    file.write_all_at(image, copy.offset)
        .map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))
}

/// eMMC boot partitions (`/dev/mmcblkNbootM`) are read-only until
/// `force_ro` is cleared; libubootenv clears it around a write and sets it
/// again afterwards, and so do we.
struct EmmcBootUnlock(Option<PathBuf>);

impl EmmcBootUnlock {
    fn new(device: &Path) -> Self {
        let name = device.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_boot_part = name
            .strip_prefix("mmcblk")
            .and_then(|rest| rest.split_once("boot"))
            .is_some_and(|(n, m)| {
                !n.is_empty()
                    && !m.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && m.bytes().all(|b| b.is_ascii_digit())
            });
        if !is_boot_part {
            return EmmcBootUnlock(None);
        }
        let force_ro = Path::new("/sys/class/block").join(name).join("force_ro");
        match std::fs::write(&force_ro, "0") {
            Ok(()) => EmmcBootUnlock(Some(force_ro)),
            Err(_) => EmmcBootUnlock(None),
        }
    }
}

impl Drop for EmmcBootUnlock {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::write(path, "1");
        }
    }
}

/// C `strtoll(s, 0)` as `%lli` reads it, non-negative only.
fn parse_c_integer(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// `%zx`: hexadecimal, `0x` optional.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_lock(mut config: EnvConfig) -> EnvConfig {
        config.lock_file = None;
        config
    }

    #[test]
    fn image_bytes_are_as_u_boot_writes_them() {
        let image = encode(&vars(&[("foo", "bar"), ("abc", "x y")]), 32, None).unwrap();
        let data = b"abc=x y\0foo=bar\0\0";
        assert_eq!(&image[4..4 + data.len()], data);
        assert!(image[4 + data.len()..].iter().all(|&b| b == 0));
        assert_eq!(image[..4], crc32fast::hash(&image[4..]).to_le_bytes());
        let redundant = encode(&vars(&[("a", "1")]), 16, Some(7)).unwrap();
        assert_eq!(&redundant[4..10], b"\x07a=1\0\0");
        assert_eq!(
            redundant[..4],
            crc32fast::hash(&redundant[5..]).to_le_bytes()
        );
    }

    #[test]
    fn a_full_environment_is_refused() {
        // 4 CRC + "a=1\0" + "\0" = 9 bytes.
        assert!(encode(&vars(&[("a", "1")]), 9, None).is_ok());
        let err = encode(&vars(&[("a", "12")]), 9, None).unwrap_err();
        assert!(err.to_string().contains("holds 5"), "{err}");
        assert!(
            encode(&vars(&[]), 3, Some(0)).is_err(),
            "smaller than the header"
        );
    }

    #[test]
    fn config_parses_like_libubootenv() {
        let config = EnvConfig::parse(
            "# device offset size\n\
             /dev/mmcblk0boot1 0x3E0000 0x20000\n\
             \n\
             /dev/mmcblk0boot1 4128768 20000 0x1000 1\n",
        )
        .unwrap();
        assert_eq!(
            config.copies(),
            [
                EnvLocation::new("/dev/mmcblk0boot1", 0x3E0000, 0x20000),
                EnvLocation::new("/dev/mmcblk0boot1", 4128768, 0x20000),
            ]
        );
        assert!(config.is_redundant());
        assert_eq!(
            EnvConfig::parse("env 010 10\n").unwrap().copies()[0].offset,
            8
        );
        for (bad, why) in [
            ("", "no device"),
            ("/dev/x 0\n", "line 1"),
            ("/dev/x -4 0x100\n", "offset"),
            ("/dev/x 0 0x1g\n", "size"),
            ("/dev/x 0 0x100\n/dev/y 0 0x200\n", "differ in size"),
            ("a 0 100\nb 0 100\nc 0 100\n", "more than two"),
            ("/dev/x 0 0x2\n", "outside"),
        ] {
            let err = EnvConfig::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.bin");
        // Other content around the region survives the atomic rewrite.
        std::fs::write(&path, vec![0xAA; 0x3000]).unwrap();
        let config = no_lock(EnvConfig::single(EnvLocation::new(&path, 0x1000, 0x1000)).unwrap());
        assert!(matches!(BootEnv::open(&config), Err(HalError::BootEnv(_))));

        let mut env = BootEnv::empty(&config);
        env.set("bootcount", Some("0")).unwrap();
        env.set("slot", Some("A")).unwrap();
        env.set("gone", Some("x")).unwrap();
        env.set("gone", None).unwrap();
        env.commit().unwrap();

        let env = BootEnv::open(&config).unwrap();
        assert_eq!(env.get("slot"), Some("A"));
        assert_eq!(env.get("bootcount"), Some("0"));
        assert_eq!(env.get("gone"), None);
        assert_eq!(env.copies(), [CopyStatus::Valid { flags: None }]);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 0x3000);
        assert!(
            bytes[..0x1000]
                .iter()
                .chain(&bytes[0x2000..])
                .all(|&b| b == 0xAA)
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn invalid_names_and_values_are_refused() {
        let config = no_lock(EnvConfig::single(EnvLocation::new("/nonexistent", 0, 64)).unwrap());
        let mut env = BootEnv::empty(&config);
        assert!(env.set("", Some("x")).is_err());
        assert!(env.set("a=b", Some("x")).is_err());
        assert!(env.set("a", Some("x\0y")).is_err());
        assert!(env.set("a", Some("multi\nline")).is_ok());
    }

    #[test]
    fn corrupt_single_copy_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.bin");
        let config = no_lock(EnvConfig::single(EnvLocation::new(&path, 0, 0x100)).unwrap());
        let mut env = BootEnv::empty(&config);
        env.set("a", Some("1")).unwrap();
        env.commit().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = BootEnv::open(&config).unwrap_err().to_string();
        assert!(
            err.contains("CRC mismatch") && err.contains("env.bin@0x0"),
            "{err}"
        );
    }

    fn redundant_config(dir: &Path) -> EnvConfig {
        no_lock(
            EnvConfig::redundant(
                EnvLocation::new(dir.join("env.bin"), 0, 0x100),
                EnvLocation::new(dir.join("env.bin"), 0x100, 0x100),
            )
            .unwrap(),
        )
    }

    #[test]
    fn redundant_commits_alternate_and_count_up() {
        let dir = tempfile::tempdir().unwrap();
        let config = redundant_config(dir.path());
        let mut env = BootEnv::empty(&config);
        env.set("n", Some("1")).unwrap();
        env.commit().unwrap();
        assert_eq!(env.active_copy(), 0);
        let bytes = std::fs::read(dir.path().join("env.bin")).unwrap();
        assert_eq!(bytes[4], 1, "first write: copy 0, flags 1");

        let mut env = BootEnv::open(&config).unwrap();
        assert_eq!(env.active_copy(), 0);
        // The file ends where copy 1 would start.
        assert!(
            matches!(&env.copies()[1], CopyStatus::Unreadable(why) if why.contains("ends before 0x200"))
        );
        env.set("n", Some("2")).unwrap();
        env.commit().unwrap();
        let bytes = std::fs::read(dir.path().join("env.bin")).unwrap();
        assert_eq!(
            (bytes[4], bytes[0x104]),
            (1, 2),
            "second write: copy 1, flags 2"
        );

        let env = BootEnv::open(&config).unwrap();
        assert_eq!((env.active_copy(), env.get("n")), (1, Some("2")));
        assert_eq!(
            env.copies(),
            [
                CopyStatus::Valid { flags: Some(1) },
                CopyStatus::Valid { flags: Some(2) }
            ]
        );
    }

    #[test]
    fn redundant_flags_wrap_and_corrupt_copy_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = redundant_config(dir.path());
        let write = |f0: u8, v0: &str, f1: u8, v1: &str| {
            let mut bytes = encode(&vars(&[("v", v0)]), 0x100, Some(f0)).unwrap();
            bytes.extend(encode(&vars(&[("v", v1)]), 0x100, Some(f1)).unwrap());
            std::fs::write(dir.path().join("env.bin"), bytes).unwrap();
        };
        write(0xFF, "old", 0, "new");
        assert_eq!(BootEnv::open(&config).unwrap().get("v"), Some("new"));
        write(0, "new", 0xFF, "old");
        assert_eq!(BootEnv::open(&config).unwrap().get("v"), Some("new"));
        write(5, "same", 5, "other");
        assert_eq!(BootEnv::open(&config).unwrap().get("v"), Some("same"));

        write(3, "old", 4, "new");
        let path = dir.path().join("env.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0x110] ^= 0xFF; // corrupt the newer copy's data
        std::fs::write(&path, &bytes).unwrap();
        let mut env = BootEnv::open(&config).unwrap();
        assert_eq!((env.get("v"), env.active_copy()), (Some("old"), 0));
        assert!(matches!(env.copies()[1], CopyStatus::BadCrc { .. }));
        // The next commit repairs the bad copy.
        env.commit().unwrap();
        let env = BootEnv::open(&config).unwrap();
        assert_eq!((env.get("v"), env.active_copy()), (Some("old"), 1));

        bytes[0x10] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let err = BootEnv::open(&config).unwrap_err().to_string();
        assert!(err.contains("env.bin@0x0: CRC mismatch"), "{err}");
        assert!(err.contains("env.bin@0x100: CRC mismatch"), "{err}");
    }

    #[test]
    fn missing_second_copy_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.bin");
        std::fs::write(&first, encode(&vars(&[("k", "v")]), 0x80, Some(9)).unwrap()).unwrap();
        let config = no_lock(
            EnvConfig::redundant(
                EnvLocation::new(&first, 0, 0x80),
                EnvLocation::new(dir.path().join("b.bin"), 0, 0x80),
            )
            .unwrap(),
        );
        let mut env = BootEnv::open(&config).unwrap();
        assert_eq!(env.get("k"), Some("v"));
        assert!(matches!(env.copies()[1], CopyStatus::Unreadable(_)));
        env.commit().unwrap();
        assert_eq!(std::fs::read(dir.path().join("b.bin")).unwrap()[4], 10);
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            entries in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_.]{0,12}", "[ -~]{0,20}", 0..12),
            flags in proptest::option::of(any::<u8>()),
        ) {
            let image = encode(&entries, 0x400, flags).unwrap();
            prop_assert_eq!(decode(&image, flags.is_some()).unwrap(), (entries, flags));
        }

        #[test]
        fn garbage_regions_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), redundant in any::<bool>()) {
            let _ = decode(&bytes, redundant);
            // With a correct CRC the list parser itself sees the garbage.
            let mut fixed = bytes.clone();
            let header = header_len(redundant);
            if fixed.len() >= header {
                let crc = crc32fast::hash(&fixed[header..]);
                fixed[..4].copy_from_slice(&crc.to_le_bytes());
                let _ = decode(&fixed, redundant);
            }
        }
    }

    /// The real `fw_printenv`/`fw_setenv` (libubootenv), or `None` when they
    /// are missing and that is allowed (not in CI).
    fn fw_tools() -> Option<()> {
        match Command::new("fw_printenv").arg("-V").output() {
            Ok(_) => Some(()),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("fw_printenv is required in CI (apt-get install libubootenv-tool): {e}")
            }
            Err(e) => {
                eprintln!("notice: skipping the libubootenv interop test: fw_printenv: {e}");
                None
            }
        }
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The entry list up to and including its terminating empty string.
    fn entries(region: &[u8], header: usize) -> &[u8] {
        let data = &region[header..];
        let end = data.windows(2).position(|w| w == [0, 0]).unwrap();
        &data[..end + 2]
    }

    #[test]
    fn interop_with_libubootenv_tools() {
        if fw_tools().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for redundant in [false, true] {
            let path = dir.path().join(format!("env-{redundant}.bin"));
            let cfg_path = dir.path().join(format!("fw_env-{redundant}.config"));
            let mut text = format!("{} 0x0 0x2000\n", path.display());
            if redundant {
                text += &format!("{} 0x2000 0x2000\n", path.display());
            }
            std::fs::write(&cfg_path, &text).unwrap();
            let config = no_lock(EnvConfig::load(&cfg_path).unwrap());

            // We write; fw_printenv reads.
            let mut env = BootEnv::empty(&config);
            env.set("bootcmd", Some("run distro_bootcmd; reset"))
                .unwrap();
            env.set("rauc_slot", Some("A")).unwrap();
            env.commit().unwrap();
            env.set("rauc_slot", Some("B")).unwrap();
            env.commit().unwrap();
            let printed = run(Command::new("fw_printenv").arg("-c").arg(&cfg_path));
            assert_eq!(printed, "bootcmd=run distro_bootcmd; reset\nrauc_slot=B\n");
            let one = run(Command::new("fw_printenv")
                .arg("-c")
                .arg(&cfg_path)
                .args(["-n", "rauc_slot"]));
            assert_eq!(one.trim_end(), "B");

            // fw_setenv writes; we read.
            run(Command::new("fw_setenv")
                .arg("-c")
                .arg(&cfg_path)
                .args(["upgrade_available", "1"]));
            run(Command::new("fw_setenv")
                .arg("-c")
                .arg(&cfg_path)
                .arg("bootcmd"));
            let env = BootEnv::open(&config).unwrap();
            let got: Vec<_> = env.vars().collect();
            assert_eq!(got, [("rauc_slot", "B"), ("upgrade_available", "1")]);
            if redundant {
                // fw_setenv wrote copies 0 then 1 after our two writes.
                assert_eq!(env.active_copy(), 1);
                assert_eq!(
                    env.copies(),
                    [
                        CopyStatus::Valid { flags: Some(3) },
                        CopyStatus::Valid { flags: Some(4) }
                    ]
                );
            }
            // Our entry list is byte-identical to theirs.
            let header = header_len(redundant);
            let bytes = std::fs::read(&path).unwrap();
            let theirs = &bytes[env.active_copy() * 0x2000..][..0x2000];
            let flags = redundant.then_some(theirs[4]);
            let ours = encode(&env.vars, 0x2000, flags).unwrap();
            assert_eq!(entries(&ours, header), entries(theirs, header));

            // An environment fw_setenv made from nothing (its default
            // environment, here empty) reads back too.
            std::fs::write(&path, vec![0u8; 0x4000]).unwrap();
            let defaults = dir.path().join("empty-defaults");
            std::fs::write(&defaults, "").unwrap();
            run(Command::new("fw_setenv")
                .arg("-c")
                .arg(&cfg_path)
                .arg("-f")
                .arg(&defaults)
                .args(["bootcount", "3"]));
            let env = BootEnv::open(&config).unwrap();
            assert_eq!(env.vars().collect::<Vec<_>>(), [("bootcount", "3")]);
        }
    }
}
