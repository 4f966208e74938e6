//! POSIX access control lists: the `system.posix_acl_access` and
//! `system.posix_acl_default` xattr format Linux uses, its validation, and
//! the rules that tie an ACL to the file mode (what chmod, creation in a
//! directory with a default ACL, and a permission check do).
//!
//! Pure: no storage. The MDS keeps an inode's access ACL beside its mode
//! (only when it says more than the mode can) and a directory's default
//! ACL as an xattr.

use serde::{Deserialize, Serialize};

use crate::Errno;
use crate::fs::{Caller, access};

/// The xattr holding an inode's access ACL.
pub const XATTR_ACCESS: &[u8] = b"system.posix_acl_access";
/// The xattr holding a directory's default ACL (inherited at creation).
pub const XATTR_DEFAULT: &[u8] = b"system.posix_acl_default";
/// The only xattr format version Linux knows.
pub const XATTR_VERSION: u32 = 2;
/// The most entries an ACL may have (what fits in a 64 KiB xattr value).
pub const MAX_ENTRIES: usize = 8191;

const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;
/// The id of entries that name no user or group.
const UNDEFINED_ID: u32 = u32::MAX;

/// Entry tags, in the order a valid ACL lists them.
pub mod tag {
    pub const USER_OBJ: u16 = 0x01;
    pub const USER: u16 = 0x02;
    pub const GROUP_OBJ: u16 = 0x04;
    pub const GROUP: u16 = 0x08;
    pub const MASK: u16 = 0x10;
    pub const OTHER: u16 = 0x20;
}

/// One entry: a tag, permissions (`rwx` as 0..=7) and, for `USER` and
/// `GROUP`, the uid or gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// A valid ACL: its entries in Linux's canonical order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixAcl {
    entries: Vec<AclEntry>,
}

impl PosixAcl {
    /// Parses an xattr value. `Ok(None)` is an empty ACL (just a header, or
    /// no bytes at all): setting it removes the ACL.
    pub fn from_xattr(bytes: &[u8]) -> Result<Option<PosixAcl>, Errno> {
        parse_xattr(bytes)?.map(PosixAcl::new).transpose()
    }

    /// Checks `entries` as Linux's `posix_acl_valid` does: one owner entry,
    /// then named users, one owning-group entry, named groups, at most one
    /// mask (required when there are named entries), one other entry.
    pub fn new(mut entries: Vec<AclEntry>) -> Result<PosixAcl, Errno> {
        let mut state = tag::USER_OBJ;
        let mut needs_mask = false;
        let mut has_mask = false;
        for entry in &mut entries {
            if entry.perm & !0o7 != 0 {
                return Err(Errno::EINVAL);
            }
            state = match (entry.tag, state) {
                (tag::USER_OBJ, tag::USER_OBJ) => tag::USER,
                (tag::USER, tag::USER) | (tag::GROUP, tag::GROUP) => {
                    if entry.id == UNDEFINED_ID {
                        return Err(Errno::EINVAL);
                    }
                    needs_mask = true;
                    state
                }
                (tag::GROUP_OBJ, tag::USER) => tag::GROUP,
                (tag::MASK, tag::GROUP) => {
                    has_mask = true;
                    tag::OTHER
                }
                (tag::OTHER, tag::GROUP | tag::OTHER) => 0,
                _ => return Err(Errno::EINVAL),
            };
            if !matches!(entry.tag, tag::USER | tag::GROUP) {
                entry.id = UNDEFINED_ID;
            }
        }
        if state != 0 || (needs_mask && !has_mask) {
            return Err(Errno::EINVAL);
        }
        Ok(PosixAcl { entries })
    }

    /// The ACL a mode alone expresses (owner, group, other).
    pub fn from_mode(perm: u32) -> PosixAcl {
        let entry = |tag, shift: u32| AclEntry {
            tag,
            perm: ((perm >> shift) & 0o7) as u16,
            id: UNDEFINED_ID,
        };
        PosixAcl {
            entries: vec![
                entry(tag::USER_OBJ, 6),
                entry(tag::GROUP_OBJ, 3),
                entry(tag::OTHER, 0),
            ],
        }
    }

    pub fn entries(&self) -> &[AclEntry] {
        &self.entries
    }

    /// The xattr value.
    pub fn to_xattr(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        bytes.extend_from_slice(&XATTR_VERSION.to_le_bytes());
        for entry in &self.entries {
            bytes.extend_from_slice(&entry.tag.to_le_bytes());
            bytes.extend_from_slice(&entry.perm.to_le_bytes());
            bytes.extend_from_slice(&entry.id.to_le_bytes());
        }
        bytes
    }

    /// Whether the mode says all of it (owner, group and other only).
    pub fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    fn find(&self, wanted: u16) -> Option<usize> {
        self.entries.iter().position(|e| e.tag == wanted)
    }

    /// The entry the mode's group bits stand for: the mask if there is
    /// one, else the owning group.
    fn group_class(&self) -> usize {
        self.find(tag::MASK)
            .or_else(|| self.find(tag::GROUP_OBJ))
            .expect("a valid ACL has a group entry")
    }

    fn perm_of(&self, index: usize) -> u32 {
        u32::from(self.entries[index].perm)
    }

    /// The `rwxrwxrwx` bits this ACL implies for the mode.
    pub fn mode_bits(&self) -> u32 {
        let owner = self.find(tag::USER_OBJ).expect("valid ACL");
        let other = self.find(tag::OTHER).expect("valid ACL");
        (self.perm_of(owner) << 6) | (self.perm_of(self.group_class()) << 3) | self.perm_of(other)
    }

    /// What chmod does to the ACL: the owner, group-class and other entries
    /// take the new mode's bits.
    pub fn chmod(&mut self, perm: u32) {
        let owner = self.find(tag::USER_OBJ).expect("valid ACL");
        let group = self.group_class();
        let other = self.find(tag::OTHER).expect("valid ACL");
        self.entries[owner].perm = ((perm >> 6) & 0o7) as u16;
        self.entries[group].perm = ((perm >> 3) & 0o7) as u16;
        self.entries[other].perm = (perm & 0o7) as u16;
    }

    /// Inheritance at creation (Linux's `posix_acl_create_masq`): this
    /// default ACL, limited by the requested `perm`, becomes the new
    /// inode's ACL. Returns the new permission bits (special bits of `perm`
    /// kept).
    pub fn create_masq(&mut self, perm: u32) -> u32 {
        let owner = self.find(tag::USER_OBJ).expect("valid ACL");
        let group = self.group_class();
        let other = self.find(tag::OTHER).expect("valid ACL");
        let limit = |entry: &mut AclEntry, shift: u32| {
            entry.perm &= ((perm >> shift) & 0o7) as u16;
        };
        limit(&mut self.entries[owner], 6);
        limit(&mut self.entries[group], 3);
        limit(&mut self.entries[other], 0);
        (perm & !0o777) | self.mode_bits()
    }

    /// Linux's `posix_acl_permission` for a caller who does not own the
    /// file: named users, then the groups (any matching group entry that
    /// grants all of `want` will do), then other; named entries and groups
    /// are limited by the mask.
    pub fn permits(&self, file_gid: u32, caller: &Caller, want: u32) -> bool {
        let want = want & (access::R_OK | access::W_OK | access::X_OK);
        let mask = self
            .find(tag::MASK)
            .map_or(0o7, |index| self.perm_of(index));
        let grants = |perm: u32| perm & want == want;
        if let Some(user) = self
            .entries
            .iter()
            .find(|e| e.tag == tag::USER && e.id == caller.uid)
        {
            return grants(u32::from(user.perm) & mask);
        }
        let mut in_a_group = false;
        for entry in &self.entries {
            let member = match entry.tag {
                tag::GROUP_OBJ => caller.in_group(file_gid),
                tag::GROUP => caller.in_group(entry.id),
                _ => false,
            };
            if member {
                in_a_group = true;
                if grants(u32::from(entry.perm) & mask) {
                    return true;
                }
            }
        }
        if in_a_group {
            return false;
        }
        let other = self.find(tag::OTHER).expect("valid ACL");
        grants(self.perm_of(other))
    }
}

/// Splits an xattr value into entries without judging them (Linux parses
/// before it checks ownership, and validates after). `Ok(None)` is an
/// empty ACL.
pub fn parse_xattr(bytes: &[u8]) -> Result<Option<Vec<AclEntry>>, Errno> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < HEADER_LEN || !(bytes.len() - HEADER_LEN).is_multiple_of(ENTRY_LEN) {
        return Err(Errno::EINVAL);
    }
    let version = u32::from_le_bytes(bytes[..HEADER_LEN].try_into().expect("4 bytes"));
    if version != XATTR_VERSION {
        return Err(Errno::EOPNOTSUPP);
    }
    let body = &bytes[HEADER_LEN..];
    if body.is_empty() {
        return Ok(None);
    }
    if body.len() / ENTRY_LEN > MAX_ENTRIES {
        return Err(Errno::EINVAL);
    }
    let entries = body
        .chunks_exact(ENTRY_LEN)
        .map(|raw| AclEntry {
            tag: u16::from_le_bytes([raw[0], raw[1]]),
            perm: u16::from_le_bytes([raw[2], raw[3]]),
            id: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
        })
        .collect();
    Ok(Some(entries))
}

/// Whether a permission check must consult the ACL at all: Linux skips it
/// when the group class grants nothing.
pub fn consulted(perm: u32) -> bool {
    perm & GROUP_CLASS_BITS != 0
}

const GROUP_CLASS_BITS: u32 = 0o070;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    fn extended() -> PosixAcl {
        PosixAcl::new(vec![
            entry(tag::USER_OBJ, 7, UNDEFINED_ID),
            entry(tag::USER, 6, 1000),
            entry(tag::GROUP_OBJ, 5, UNDEFINED_ID),
            entry(tag::GROUP, 4, 2000),
            entry(tag::MASK, 6, UNDEFINED_ID),
            entry(tag::OTHER, 0, UNDEFINED_ID),
        ])
        .unwrap()
    }

    fn caller(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            groups: groups.to_vec(),
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(Some(acl)) = PosixAcl::from_xattr(&bytes) {
                // Whatever parses re-encodes to a value that parses the same.
                proptest::prop_assert_eq!(PosixAcl::from_xattr(&acl.to_xattr()), Ok(Some(acl)));
            }
        }
    }

    #[test]
    fn xattr_round_trips() {
        let acl = extended();
        assert_eq!(PosixAcl::from_xattr(&acl.to_xattr()), Ok(Some(acl)));
    }

    #[test]
    fn empty_values_mean_removal() {
        assert_eq!(PosixAcl::from_xattr(&[]), Ok(None));
        assert_eq!(PosixAcl::from_xattr(&2u32.to_le_bytes()), Ok(None));
    }

    #[test]
    fn malformed_values_are_refused() {
        let good = extended().to_xattr();
        assert_eq!(PosixAcl::from_xattr(&good[..7]), Err(Errno::EINVAL));
        assert_eq!(PosixAcl::from_xattr(&[2, 0]), Err(Errno::EINVAL));
        let mut version = good.clone();
        version[0] = 1;
        assert_eq!(PosixAcl::from_xattr(&version), Err(Errno::EOPNOTSUPP));
        let mut perm = good.clone();
        perm[6] = 8;
        assert_eq!(PosixAcl::from_xattr(&perm), Err(Errno::EINVAL));
    }

    #[test]
    fn validation_follows_linux() {
        let u = UNDEFINED_ID;
        let cases = [
            // Named entries need a mask.
            vec![
                entry(tag::USER_OBJ, 7, u),
                entry(tag::USER, 7, 5),
                entry(tag::GROUP_OBJ, 7, u),
                entry(tag::OTHER, 7, u),
            ],
            // Out of order.
            vec![
                entry(tag::GROUP_OBJ, 7, u),
                entry(tag::USER_OBJ, 7, u),
                entry(tag::OTHER, 7, u),
            ],
            // Missing other.
            vec![entry(tag::USER_OBJ, 7, u), entry(tag::GROUP_OBJ, 7, u)],
            // Two owners.
            vec![
                entry(tag::USER_OBJ, 7, u),
                entry(tag::USER_OBJ, 7, u),
                entry(tag::GROUP_OBJ, 7, u),
                entry(tag::OTHER, 7, u),
            ],
            // Unknown tag.
            vec![
                entry(tag::USER_OBJ, 7, u),
                entry(0x40, 7, u),
                entry(tag::GROUP_OBJ, 7, u),
                entry(tag::OTHER, 7, u),
            ],
        ];
        for entries in cases {
            assert_eq!(
                PosixAcl::new(entries.clone()),
                Err(Errno::EINVAL),
                "{entries:?}"
            );
        }
        assert!(PosixAcl::from_mode(0o640).is_minimal());
    }

    #[test]
    fn the_mode_mirrors_owner_mask_and_other() {
        let mut acl = extended();
        assert_eq!(acl.mode_bits(), 0o760);
        acl.chmod(0o705);
        assert_eq!(acl.mode_bits(), 0o705);
        // chmod moved the mask, not the owning group's entry.
        assert_eq!(acl.entries()[2].perm, 5);
        assert_eq!(acl.entries()[4].perm, 0);
    }

    #[test]
    fn creation_limits_the_default_by_the_requested_mode() {
        let mut acl = extended();
        assert_eq!(acl.create_masq(0o2755), 0o2740);
        let mut minimal = PosixAcl::from_mode(0o777);
        assert_eq!(minimal.create_masq(0o640), 0o640);
    }

    #[test]
    fn permission_checks_walk_users_groups_then_other() {
        let acl = extended();
        // A named user, limited by the mask (rw- & rw-).
        assert!(acl.permits(50, &caller(1000, &[1]), access::R_OK | access::W_OK));
        assert!(!acl.permits(50, &caller(1000, &[1]), access::X_OK));
        // The owning group: r-x & mask rw- = r--.
        assert!(acl.permits(50, &caller(7, &[50]), access::R_OK));
        assert!(!acl.permits(50, &caller(7, &[50]), access::X_OK));
        // A named group.
        assert!(acl.permits(50, &caller(7, &[2000]), access::R_OK));
        // In a group that does not grant: no fallback to other.
        assert!(!acl.permits(50, &caller(7, &[2000]), access::W_OK));
        // Nobody in particular gets other (---).
        assert!(!acl.permits(50, &caller(7, &[9]), access::R_OK));
    }
}
