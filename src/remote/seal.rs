//! Sealing sessions for the remote tier: AES-256-GCM (OpenSSL EVP) under a key shared by the
//! fleet, with where the value lives as associated data, so a value can be neither read nor
//! altered nor moved to another id, database, key prefix or fleet by whoever can reach the
//! store.
//!
//! Sealed value: `"SSR2"` | key id (4 bytes: SHA-256(key)[..4]) | nonce (12 random bytes) |
//! ciphertext | tag (16). Plaintext: created (u64 LE) | expires (u64 LE) | session DER.
//! Associated data: the 20 header bytes, the [`Binding`] (database, key prefix, fleet label),
//! then the session id. 0.4 sealed `"SSR1"` values with the header and id only: they are
//! refused as [`Refused::OldFormat`] (they expire within one session lifetime).
//!
//! Random 96-bit nonces: NIST's bound for one key is 2^32 seals, so rotate keys (the key file
//! takes several) well before a fleet has stored four billion sessions under one.

use std::ffi::c_int;
use std::io::Read;
use std::path::Path;

use openssl_sys as ossl;

use crate::error::{Error, ErrorKind, Result};
use crate::store::segment::{self, Trust};

const MAGIC: &[u8; 4] = b"SSR2";
/// What 0.4 sealed with, unbound to where the value lives (see the module's doc).
const OLD_MAGIC: &[u8; 4] = b"SSR1";
const KEY_ID_BYTES: usize = 4;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const HEADER_BYTES: usize = MAGIC.len() + KEY_ID_BYTES + NONCE_BYTES;
const TIMES_BYTES: usize = 16;
/// Bytes a sealed value adds to the session DER.
pub const OVERHEAD: usize = HEADER_BYTES + TIMES_BYTES + TAG_BYTES;

/// A key file is a few lines; anything larger is not one.
const MAX_KEY_FILE: usize = 64 * 1024;
/// How to make a valid key file (quoted in every refusal).
const MAKE_ONE: &str = "make one with: openssl rand -hex 32 > FILE; chmod 600 FILE";

const EVP_CTRL_GCM_GET_TAG: c_int = 0x10;
const EVP_CTRL_GCM_SET_TAG: c_int = 0x11;

/// One 256-bit key and its id. Wiped when dropped.
pub struct Key {
    id: [u8; KEY_ID_BYTES],
    bytes: [u8; 32],
}

impl Key {
    pub fn new(bytes: [u8; 32]) -> Key {
        let mut md = [0u8; 32];
        // SAFETY: SHA256 reads 32 bytes from `bytes` and writes 32 into `md`.
        unsafe { ossl::SHA256(bytes.as_ptr(), bytes.len(), md.as_mut_ptr()) };
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&md[..KEY_ID_BYTES]);
        Key { id, bytes }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        crate::util::wipe(&mut self.bytes);
    }
}

/// The key values are sealed with, and older keys still accepted when opening (rotation).
pub struct Keyring {
    /// Boxed, like the others in their Vec: moving a Keyring copies pointers, not key bytes.
    current: Box<Key>,
    older: Vec<Key>,
}

/// Where sealed values live: the database, the key prefix and the fleet label, encoded
/// unambiguously (lengths before texts) for the associated data. A value copied to another
/// database, prefix or fleet (two fleets sharing a key file) does not open there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Binding(Vec<u8>);

impl Binding {
    pub fn new(db: u32, prefix: &str, fleet: &str) -> Binding {
        let mut b = Vec::with_capacity(12 + prefix.len() + fleet.len());
        b.extend_from_slice(&db.to_le_bytes());
        for text in [prefix, fleet] {
            b.extend_from_slice(&(text.len() as u32).to_le_bytes());
            b.extend_from_slice(text.as_bytes());
        }
        Binding(b)
    }

    /// The associated data of a value with `header` for session `id`.
    fn aad(&self, header: &[u8], id: &[u8]) -> Vec<u8> {
        [header, &self.0, id].concat()
    }
}

/// Why a value did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a value sealed for this id, database, prefix and fleet with a key we hold:
    /// tampered, truncated, moved, or sealed under a key not in the key file.
    NotAuthentic,
    /// Sealed by 0.4, before values were bound to where they live.
    OldFormat,
}

/// What opening a sealed value gave.
pub struct Opened {
    pub created: u32,
    pub expires: u32,
    pub der: Vec<u8>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        crate::util::wipe(&mut self.der);
    }
}

impl Keyring {
    pub fn new(current: Key, older: Vec<Key>) -> Keyring {
        Keyring {
            current: Box::new(current),
            older,
        }
    }

    /// Read a key file: either one key per line as 64 hex digits (`openssl rand -hex 32`),
    /// blank lines and `#` comments ignored, the first key sealing and the others accepted for
    /// opening only (rotation); or exactly 32 raw bytes (`head -c 32 /dev/urandom`), one key.
    /// The file must be a regular file owned by this user and readable by nobody else.
    /// It is read into one buffer of its size (never grown, so never copied) and wiped after.
    pub fn load(path: &Path) -> Result<Keyring> {
        let (mut file, st) = segment::open_trusted(path, false, Trust::Owner)?;
        if st.st_mode & 0o077 != 0 {
            return Err(Error::security(format!(
                "key file {} has mode {:o}: it must be readable by its owner only (chmod 600)",
                path.display(),
                st.st_mode & 0o777
            )));
        }
        let bad = |m: String| {
            Error::new(
                ErrorKind::Invalid,
                format!("key file {}: {m}", path.display()),
            )
        };
        let size = usize::try_from(st.st_size).unwrap_or(usize::MAX);
        if size > MAX_KEY_FILE {
            return Err(bad(format!(
                "{size} bytes is not a key file (at most {MAX_KEY_FILE}); {MAKE_ONE}"
            )));
        }
        // One byte more than the size: a file that grew since fstat is refused, not followed.
        let mut buf = vec![0u8; size + 1];
        let mut len = 0;
        let read = loop {
            match file.read(&mut buf[len..]) {
                Ok(0) => break Ok(()),
                Ok(n) if len + n > size => break Err(bad("it changed while being read".into())),
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break Err(Error::io(
                        format!("cannot read key file {}", path.display()),
                        e,
                    ))
                }
            }
        };
        let parsed = read.and_then(|()| Self::parse(&buf[..len]).map_err(bad));
        crate::util::wipe(&mut buf);
        parsed
    }

    /// Keys from a key file's bytes (see [`Keyring::load`]).
    fn parse(bytes: &[u8]) -> std::result::Result<Keyring, String> {
        if bytes.len() == 32
            && !bytes
                .iter()
                .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            // Raw key bytes (random bytes are almost never all printable; 32 printable bytes
            // are a mistyped text key and get the text rules' message).
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            let key = Key::new(k);
            crate::util::wipe(&mut k);
            return Ok(Keyring::new(key, Vec::new()));
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(format!(
                "not a key file: expected lines of 64 hex digits, or exactly 32 raw bytes ({} here); {MAKE_ONE}",
                bytes.len()
            ));
        };
        let is_key_line = |l: &&str| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        };
        let count = text.lines().filter(is_key_line).count();
        if count == 0 {
            return Err(format!("no key in it; {MAKE_ONE}"));
        }
        // The first key seals; the others go in a Vec sized once (a Vec that grows copies its
        // keys and frees the old buffer unwiped; `remove(0)` would shift them and leave the
        // last one's bytes behind).
        let mut current: Option<Box<Key>> = None;
        let mut older: Vec<Key> = Vec::with_capacity(count - 1);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut bytes = [0u8; 32];
            if line.len() != 64 || hex_decode(line, &mut bytes).is_none() {
                crate::util::wipe(&mut bytes);
                // Never echo the line: it may be a key with a typo.
                return Err(format!(
                    "line {} is not a key of 64 hex digits; {MAKE_ONE}",
                    n + 1
                ));
            }
            match current {
                None => current = Some(Box::new(Key::new(bytes))),
                Some(_) => older.push(Key::new(bytes)),
            }
            crate::util::wipe(&mut bytes);
        }
        Ok(Keyring {
            current: current.expect("count > 0"),
            older,
        })
    }

    /// Seal a session for `id`, to live where `at` says.
    pub fn seal(
        &self,
        at: &Binding,
        id: &[u8],
        der: &[u8],
        created: u32,
        expires: u32,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(OVERHEAD + der.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.current.id);
        let mut nonce = [0u8; NONCE_BYTES];
        crate::util::random_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let mut plain = Vec::with_capacity(TIMES_BYTES + der.len());
        plain.extend_from_slice(&u64::from(created).to_le_bytes());
        plain.extend_from_slice(&u64::from(expires).to_le_bytes());
        plain.extend_from_slice(der);
        let aad = at.aad(&out[..HEADER_BYTES], id);
        let sealed = gcm(true, &self.current.bytes, &nonce, &aad, &plain, None);
        crate::util::wipe(&mut plain);
        let (ct, tag) = sealed?;
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Open a value read for `id` where `at` says it lives. Refused if it is not one we
    /// sealed for that id and place with a key we hold (tampered, truncated, moved from
    /// another id, database, prefix or fleet, sealed under a retired key), or if 0.4 sealed it.
    pub fn open(
        &self,
        at: &Binding,
        id: &[u8],
        value: &[u8],
    ) -> std::result::Result<Opened, Refused> {
        if value.len() >= OVERHEAD && &value[..OLD_MAGIC.len()] == OLD_MAGIC {
            return Err(Refused::OldFormat);
        }
        if value.len() < OVERHEAD || &value[..MAGIC.len()] != MAGIC {
            return Err(Refused::NotAuthentic);
        }
        let key_id = &value[MAGIC.len()..MAGIC.len() + KEY_ID_BYTES];
        let key = std::iter::once(&*self.current)
            .chain(&self.older)
            .find(|k| k.id == key_id)
            .ok_or(Refused::NotAuthentic)?;
        let nonce = &value[MAGIC.len() + KEY_ID_BYTES..HEADER_BYTES];
        let (ct, tag) = value[HEADER_BYTES..].split_at(value.len() - HEADER_BYTES - TAG_BYTES);
        let aad = at.aad(&value[..HEADER_BYTES], id);
        let (mut plain, _) = gcm(false, &key.bytes, nonce, &aad, ct, Some(tag))
            .map_err(|_| Refused::NotAuthentic)?;
        let times = |r: std::ops::Range<usize>| {
            u64::from_le_bytes(plain[r].try_into().unwrap()).min(u64::from(u32::MAX)) as u32
        };
        let opened = Opened {
            created: times(0..8),
            expires: times(8..16),
            der: plain[TIMES_BYTES..].to_vec(),
        };
        crate::util::wipe(&mut plain);
        Ok(opened)
    }
}

fn hex_decode(s: &str, out: &mut [u8]) -> Option<()> {
    let digits = s.as_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (digits[2 * i] as char).to_digit(16)?;
        let lo = (digits[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(())
}

/// One AES-256-GCM pass. Encrypting returns (ciphertext, tag); decrypting checks `tag` and
/// returns (plaintext, empty), or an error if the value does not authenticate.
fn gcm(
    encrypt: bool,
    key: &[u8; 32],
    nonce: &[u8],
    aad: &[u8],
    input: &[u8],
    tag: Option<&[u8]>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let fail = |what: &str| {
        // SAFETY: clears this thread's OpenSSL error queue.
        unsafe { ossl::ERR_clear_error() };
        Error::new(ErrorKind::OpenSsl, format!("AES-256-GCM: {what}"))
    };
    // SAFETY: a fresh context, freed by the guard below on every path.
    let ctx = unsafe { ossl::EVP_CIPHER_CTX_new() };
    if ctx.is_null() {
        return Err(fail("no cipher context"));
    }
    struct Free(*mut ossl::EVP_CIPHER_CTX);
    impl Drop for Free {
        fn drop(&mut self) {
            // SAFETY: the context we made; freeing also cleanses the key schedule.
            unsafe { ossl::EVP_CIPHER_CTX_free(self.0) };
        }
    }
    let _free = Free(ctx);
    let mut out = vec![0u8; input.len() + 16];
    let mut n: c_int = 0;
    let mut total = 0usize;
    // SAFETY: every pointer below is to a live buffer of the length given with it; a 12-byte
    // nonce is GCM's default IV length.
    unsafe {
        let cipher = ossl::EVP_aes_256_gcm();
        let init = if encrypt {
            ossl::EVP_EncryptInit_ex(
                ctx,
                cipher,
                std::ptr::null_mut(),
                key.as_ptr(),
                nonce.as_ptr(),
            )
        } else {
            ossl::EVP_DecryptInit_ex(
                ctx,
                cipher,
                std::ptr::null_mut(),
                key.as_ptr(),
                nonce.as_ptr(),
            )
        };
        if init != 1 {
            return Err(fail("init"));
        }
        let update = |out: *mut u8, n: &mut c_int, data: &[u8]| {
            if encrypt {
                ossl::EVP_EncryptUpdate(ctx, out, n, data.as_ptr(), data.len() as c_int)
            } else {
                ossl::EVP_DecryptUpdate(ctx, out, n, data.as_ptr(), data.len() as c_int)
            }
        };
        if update(std::ptr::null_mut(), &mut n, aad) != 1 {
            return Err(fail("associated data"));
        }
        if update(out.as_mut_ptr(), &mut n, input) != 1 {
            return Err(fail("update"));
        }
        total += n as usize;
        if let Some(tag) = tag {
            if tag.len() != TAG_BYTES
                || ossl::EVP_CIPHER_CTX_ctrl(
                    ctx,
                    EVP_CTRL_GCM_SET_TAG,
                    TAG_BYTES as c_int,
                    tag.as_ptr() as *mut _,
                ) != 1
            {
                return Err(fail("tag"));
            }
        }
        let fin = if encrypt {
            ossl::EVP_EncryptFinal_ex(ctx, out.as_mut_ptr().add(total), &mut n)
        } else {
            ossl::EVP_DecryptFinal_ex(ctx, out.as_mut_ptr().add(total), &mut n)
        };
        if fin != 1 {
            crate::util::wipe(&mut out);
            return Err(fail("the value does not authenticate"));
        }
        total += n as usize;
        out.truncate(total);
        let mut t = Vec::new();
        if encrypt {
            t = vec![0u8; TAG_BYTES];
            if ossl::EVP_CIPHER_CTX_ctrl(
                ctx,
                EVP_CTRL_GCM_GET_TAG,
                TAG_BYTES as c_int,
                t.as_mut_ptr() as *mut _,
            ) != 1
            {
                return Err(fail("get tag"));
            }
        }
        Ok((out, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(seed: u8) -> Keyring {
        Keyring::new(Key::new([seed; 32]), Vec::new())
    }

    const ID: [u8; 32] = [9; 32];
    static AT: std::sync::LazyLock<Binding> =
        std::sync::LazyLock::new(|| Binding::new(0, "shmsess:", ""));

    #[test]
    fn a_value_moved_to_another_database_prefix_or_fleet_is_refused() {
        let k = ring(1);
        let v = k.seal(&AT, &ID, b"der", 1, 2).unwrap();
        assert!(k.open(&AT, &ID, &v).is_ok());
        for (db, prefix, fleet) in [
            (1, "shmsess:", ""),
            (0, "other:", ""),
            (0, "shmsess:", "blue"),
        ] {
            assert_eq!(
                k.open(&Binding::new(db, prefix, fleet), &ID, &v).err(),
                Some(Refused::NotAuthentic),
                "{db} {prefix} {fleet}"
            );
        }
        // Lengths come before texts: moving bytes between the prefix and the label changes
        // the binding.
        assert_ne!(Binding::new(0, "ab", "c"), Binding::new(0, "a", "bc"));
    }

    #[test]
    fn a_value_sealed_by_0_4_is_refused_as_such() {
        // 0.4's layout: "SSR1", the same header and sizes, AAD of header and id only.
        let k = ring(1);
        let mut v = k.seal(&AT, &ID, b"der", 1, 2).unwrap();
        v[..4].copy_from_slice(b"SSR1");
        assert_eq!(k.open(&AT, &ID, &v).err(), Some(Refused::OldFormat));
        assert_eq!(
            k.open(&AT, &ID, b"SSR1:used").err(),
            Some(Refused::NotAuthentic),
            "a tombstone is no old value"
        );
    }

    #[test]
    fn a_sealed_session_opens_with_its_times_and_bytes() {
        let k = ring(1);
        let v = k.seal(&AT, &ID, b"session der", 100, 400).unwrap();
        assert_eq!(v.len(), OVERHEAD + 11);
        assert!(
            !v.windows(11).any(|w| w == b"session der"),
            "the DER is not in clear"
        );
        let o = k.open(&AT, &ID, &v).unwrap();
        assert_eq!(
            (o.created, o.expires, &o.der[..]),
            (100, 400, &b"session der"[..])
        );
        // A fresh nonce per seal: the same session never seals to the same bytes.
        assert_ne!(v, k.seal(&AT, &ID, b"session der", 100, 400).unwrap());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let k = ring(1);
        let v = k.seal(&AT, &ID, &[0x30; 160], 1, 2).unwrap();
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut t = v.clone();
                t[i] ^= 1 << bit;
                assert!(k.open(&AT, &ID, &t).is_err(), "byte {i} bit {bit}");
            }
        }
        for n in 0..v.len() {
            assert!(k.open(&AT, &ID, &v[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn a_value_moved_to_another_id_or_key_is_refused() {
        let k = ring(1);
        let v = k.seal(&AT, &ID, b"der", 1, 2).unwrap();
        assert!(k.open(&AT, &[8; 32], &v).is_err(), "another id");
        assert!(ring(2).open(&AT, &ID, &v).is_err(), "another key");
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = ring(1);
        let sealed_old = old.seal(&AT, &ID, b"der", 1, 2).unwrap();
        let rotated = Keyring::new(Key::new([2; 32]), vec![Key::new([1; 32])]);
        assert!(
            rotated.open(&AT, &ID, &sealed_old).is_ok(),
            "old key still opens"
        );
        let sealed_new = rotated.seal(&AT, &ID, b"der", 1, 2).unwrap();
        assert!(
            old.open(&AT, &ID, &sealed_new).is_err(),
            "sealed with the new key"
        );
        assert!(ring(2).open(&AT, &ID, &sealed_new).is_ok());
    }

    #[test]
    fn key_files_are_parsed_strictly() {
        let p = |t: &str| Keyring::parse(t.as_bytes());
        let one = "a".repeat(64);
        let two = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789";
        let k = p(&format!("# fleet key\n\n{two}\n{one}\n")).unwrap();
        assert_eq!(k.older.len(), 1);
        assert_eq!(k.current.bytes[..3], [0x01, 0x23, 0x45]);
        assert_eq!(k.older[0].bytes, [0xaa; 32]);
        assert!(p("").is_err());
        assert!(p("# only a comment\n").is_err());
        let err = p(&"g".repeat(64)).err().unwrap();
        assert!(!err.contains("ggg"), "the line is not echoed: {err}");
        assert!(
            err.contains("openssl rand -hex 32 > FILE; chmod 600 FILE"),
            "{err}"
        );
        assert!(p(&"a".repeat(62)).is_err());
        assert!(p(&"a".repeat(66)).is_err());
    }

    #[test]
    fn raw_32_byte_key_files_are_keys_and_other_bytes_say_how_to_make_one() {
        let raw: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x80);
        let from_raw = Keyring::parse(&raw).unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let from_hex = Keyring::parse(hex.as_bytes()).unwrap();
        let v = from_raw.seal(&AT, &ID, b"der", 1, 2).unwrap();
        assert!(
            from_hex.open(&AT, &ID, &v).is_ok(),
            "the same key either way"
        );
        // 32 printable bytes are a mistyped text key (e.g. `openssl rand -hex 16`), not raw.
        let e = Keyring::parse("0123456789abcdef0123456789abcdef".as_bytes())
            .err()
            .unwrap();
        assert!(
            e.contains("64 hex digits") && e.contains("chmod 600 FILE"),
            "{e}"
        );
        // Binary of another length.
        let e = Keyring::parse(&[0xff; 31]).err().unwrap();
        assert!(
            e.contains("exactly 32 raw bytes (31 here)") && e.contains("openssl rand -hex 32"),
            "{e}"
        );
    }

    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shmsess-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "b".repeat(64)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&path).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Security, "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Keyring::load(&path).is_ok());
        // A raw key file, as `head -c 32 /dev/urandom` makes them.
        std::fs::write(&path, [0x9c; 32]).unwrap();
        assert!(Keyring::load(&path).is_ok(), "raw bytes");
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(
            Keyring::load(&link).err().unwrap().kind,
            ErrorKind::Security
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
