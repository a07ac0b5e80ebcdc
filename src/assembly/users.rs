//! Users and groups of an image: `/etc/passwd`, `/etc/group`,
//! `/etc/shadow` and `/etc/nsswitch.conf` entries, and home directories
//! owned by their users, so that `config.User = "app"` runs as that user
//! and the user can write its home. Neither dockerTools nor nix2container
//! has this; their users write the files by hand (and get the ownership
//! of the home directory wrong without `fakeRootCommands`).
//!
//! `root` (uid 0) and `nobody` (uid 65534) are always there, as most
//! programs expect; a user's primary group is created when no declared
//! group has its gid.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::packing::{FileData, Owner, TreeEntry};

/// A user of the image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id; the uid when absent.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The home directory; `/home/<name>` when absent. It is created,
    /// owned by the user, unless it is `/` or `/nonexistent`.
    #[serde(default)]
    pub home: Option<String>,
    /// The login shell; `/bin/sh` when absent.
    #[serde(default)]
    pub shell: Option<String>,
    /// The GECOS field.
    #[serde(default)]
    pub description: Option<String>,
    /// Supplementary groups, by name.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A group of the image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The group name.
    pub name: String,
    /// The group id.
    pub gid: u32,
    /// Members besides users who name this group in their `groups`.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A user or group declaration that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    /// A name that is not a valid user or group name.
    #[error("{0:?} is not a valid user or group name (lower-case letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters)")]
    Name(String),
    /// Two users or two groups with one name or one id.
    #[error("{what} {value} is declared twice")]
    Duplicate {
        /// `user name`, `uid`, `group name` or `gid`.
        what: &'static str,
        /// The name or id.
        value: String,
    },
    /// A user names a group that is not declared.
    #[error("user {user} is in group {group}, which is not declared")]
    UnknownGroup {
        /// The user.
        user: String,
        /// The group.
        group: String,
    },
    /// A home or shell that is not an absolute path.
    #[error("{0:?} is not an absolute path")]
    Path(String),
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The entries the image root gets for `users` and `groups` (with `root`
/// and `nobody` added).
pub fn entries(users: &[User], groups: &[Group]) -> Result<Vec<TreeEntry>, UsersError> {
    struct U {
        name: String,
        uid: u32,
        gid: u32,
        home: String,
        shell: String,
        gecos: String,
    }
    let mut all: Vec<U> = Vec::new();
    let builtin =
        |name: &str, id: u32, home: &str, shell: &str| U { name: name.into(), uid: id, gid: id, home: home.into(), shell: shell.into(), gecos: name.into() };
    if !users.iter().any(|u| u.name == "root" || u.uid == 0) {
        all.push(builtin("root", 0, "/root", "/bin/sh"));
    }
    for u in users {
        if !valid_name(&u.name) {
            return Err(UsersError::Name(u.name.clone()));
        }
        let home = u.home.clone().unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        for p in [&home, &shell] {
            if !p.starts_with('/') {
                return Err(UsersError::Path(p.clone()));
            }
        }
        all.push(U { name: u.name.clone(), uid: u.uid, gid: u.gid.unwrap_or(u.uid), home, shell, gecos: u.description.clone().unwrap_or_default() });
    }
    if !users.iter().any(|u| u.name == "nobody" || u.uid == 65534) {
        all.push(builtin("nobody", 65534, "/nonexistent", "/bin/false"));
    }
    let mut names = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for u in &all {
        if !names.insert(u.name.as_str()) {
            return Err(UsersError::Duplicate { what: "user name", value: u.name.clone() });
        }
        if !uids.insert(u.uid) {
            return Err(UsersError::Duplicate { what: "uid", value: u.uid.to_string() });
        }
    }

    // Groups: declared ones, then root, nobody and each user's own group
    // where no group has its gid; members from the users' `groups`.
    let mut by_name: BTreeMap<String, (u32, BTreeSet<String>)> = BTreeMap::new();
    let mut gids = BTreeSet::new();
    for g in groups {
        if !valid_name(&g.name) {
            return Err(UsersError::Name(g.name.clone()));
        }
        if by_name.insert(g.name.clone(), (g.gid, g.members.iter().cloned().collect())).is_some() {
            return Err(UsersError::Duplicate { what: "group name", value: g.name.clone() });
        }
        if !gids.insert(g.gid) {
            return Err(UsersError::Duplicate { what: "gid", value: g.gid.to_string() });
        }
    }
    for u in &all {
        if !gids.contains(&u.gid) && !by_name.contains_key(&u.name) {
            by_name.insert(u.name.clone(), (u.gid, BTreeSet::new()));
            gids.insert(u.gid);
        }
    }
    for u in users {
        for g in &u.groups {
            let (_, members) = by_name.get_mut(g).ok_or_else(|| UsersError::UnknownGroup { user: u.name.clone(), group: g.clone() })?;
            members.insert(u.name.clone());
        }
    }
    let group_name: BTreeMap<u32, &str> = by_name.iter().map(|(n, (gid, _))| (*gid, n.as_str())).collect();

    let mut passwd = String::new();
    let mut shadow = String::new();
    for u in &all {
        passwd.push_str(&format!("{}:x:{}:{}:{}:{}:{}\n", u.name, u.uid, u.gid, u.gecos, u.home, u.shell));
        // No password: nobody logs in with one.
        shadow.push_str(&format!("{}:!:1::::::\n", u.name));
    }
    let mut group_lines: Vec<(u32, String)> =
        by_name.iter().map(|(name, (gid, members))| (*gid, format!("{name}:x:{gid}:{}\n", members.iter().cloned().collect::<Vec<_>>().join(",")))).collect();
    group_lines.sort();
    let group: String = group_lines.into_iter().map(|(_, l)| l).collect();

    let file = |path: &str, mode: u32, text: String| TreeEntry::File { path: path.into(), mode, owner: Owner::default(), data: FileData::bytes(text) };
    let mut entries = vec![
        file("etc/passwd", 0o644, passwd),
        file("etc/group", 0o644, group),
        file("etc/shadow", 0o600, shadow),
        file("etc/nsswitch.conf", 0o644, "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".into()),
    ];
    for u in &all {
        if matches!(u.home.as_str(), "/" | "/nonexistent" | "/var/empty") {
            continue;
        }
        let owner = Owner { uid: u.uid, gid: u.gid, uname: Some(u.name.clone()), gname: group_name.get(&u.gid).map(|g| g.to_string()) };
        let mode = if u.uid == 0 { 0o700 } else { 0o755 };
        entries.push(TreeEntry::Dir { path: u.home.trim_start_matches('/').to_string(), mode, owner });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32) -> User {
        User { name: name.into(), uid, gid: None, home: None, shell: None, description: None, groups: vec![] }
    }

    fn text(entries: &[TreeEntry], path: &str) -> String {
        match entries.iter().find(|e| e.path() == path) {
            Some(TreeEntry::File { data: FileData::Bytes(b), .. }) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn users_get_passwd_group_shadow_and_a_home_they_own() {
        let mut app = user("app", 1000);
        app.groups = vec!["wheel".into()];
        let e = entries(&[app], &[Group { name: "wheel".into(), gid: 10, members: vec![] }]).unwrap();
        assert_eq!(
            text(&e, "etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        );
        assert_eq!(text(&e, "etc/group"), "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnobody:x:65534:\n");
        assert!(text(&e, "etc/shadow").contains("app:!:1::::::\n"));
        assert!(text(&e, "etc/nsswitch.conf").starts_with("passwd: files\n"));
        let home = e.iter().find(|x| x.path() == "home/app").unwrap();
        assert_eq!(
            home,
            &TreeEntry::Dir {
                path: "home/app".into(),
                mode: 0o755,
                owner: Owner { uid: 1000, gid: 1000, uname: Some("app".into()), gname: Some("app".into()) }
            }
        );
        assert!(e.iter().any(|x| x.path() == "root"));
        assert!(!e.iter().any(|x| x.path() == "nonexistent"));
    }

    #[test]
    fn bad_declarations_are_errors() {
        assert!(matches!(entries(&[user("App", 1)], &[]), Err(UsersError::Name(_))));
        assert!(matches!(entries(&[user("a", 1), user("b", 1)], &[]), Err(UsersError::Duplicate { what: "uid", .. })));
        let mut u = user("a", 1);
        u.groups = vec!["docker".into()];
        assert_eq!(entries(&[u], &[]).unwrap_err().to_string(), "user a is in group docker, which is not declared");
        let mut u = user("a", 1);
        u.home = Some("home/a".into());
        assert!(matches!(entries(&[u], &[]), Err(UsersError::Path(_))));
        let g = |n: &str, gid| Group { name: n.into(), gid, members: vec![] };
        assert!(matches!(entries(&[], &[g("x", 5), g("y", 5)]), Err(UsersError::Duplicate { what: "gid", .. })));
    }

    #[test]
    fn a_declared_group_can_be_a_users_primary_group() {
        let mut u = user("app", 1000);
        u.gid = Some(100);
        let e = entries(&[u], &[Group { name: "users".into(), gid: 100, members: vec![] }]).unwrap();
        assert!(text(&e, "etc/group").contains("users:x:100:\n"));
        assert!(!text(&e, "etc/group").contains("app:x:"));
        let home = e.iter().find(|x| x.path() == "home/app").unwrap();
        assert!(matches!(home, TreeEntry::Dir { owner: Owner { gid: 100, gname: Some(g), .. }, .. } if g == "users"));
    }
}
