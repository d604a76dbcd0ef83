//! ZooKeeper paths: validation, joining, splitting, ancestry.
//!
//! Every function here works on whole segments or on bytes known to be
//! ASCII (`/`, digits), never on byte offsets computed from a count of
//! characters: ZooKeeper allows any Unicode in a node name, and one bad slice
//! of `café-0000000001` is a panic in every route that meets it.
//!
//! Relative paths are relative to a route's root: `""` is the root itself,
//! `"a/b"` a descendant.

/// Absolute path of `relative` under `base`.
pub fn join(base: &str, relative: &str) -> String {
    match (base, relative) {
        (b, "") => b.to_string(),
        ("/", r) => format!("/{r}"),
        (b, r) => format!("{b}/{r}"),
    }
}

/// Relative path of the child `name` of the relative path `parent`.
pub fn child(parent: &str, name: &str) -> String {
    match parent {
        "" => name.to_string(),
        p => format!("{p}/{name}"),
    }
}

/// Path of `absolute` relative to `base`, or `None` when it is outside.
pub fn relative<'a>(base: &str, absolute: &'a str) -> Option<&'a str> {
    if absolute == base {
        return Some("");
    }
    if base == "/" {
        return absolute.strip_prefix('/');
    }
    absolute.strip_prefix(base)?.strip_prefix('/')
}

/// Parent of a relative path (`None` for the root).
pub fn parent(relative: &str) -> Option<&str> {
    if relative.is_empty() {
        None
    } else {
        Some(relative.rsplit_once('/').map(|(p, _)| p).unwrap_or(""))
    }
}

/// Parent of an absolute path (`None` for `/`, `"/"` for a top-level node).
pub fn parent_absolute(absolute: &str) -> Option<&str> {
    match absolute.rsplit_once('/') {
        None => None,
        Some(("", "")) => None,
        Some(("", _)) => Some("/"),
        Some((p, _)) => Some(p),
    }
}

/// Last segment of a path (relative or absolute).
pub fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `relative` and each of its ancestors up to the route root `""`, nearest
/// first.
pub fn self_and_ancestors(relative: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(relative), |p| parent(p))
}

/// Whether `inner` is `outer` or lies beneath it (segment aware: `/ab` is
/// not within `/a`). Absolute paths, or relative ones under a non-empty
/// `outer` (`"a/b"` is within `"a"`).
pub fn is_within(inner: &str, outer: &str) -> bool {
    outer == "/" || inner == outer || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
}

/// Whether a node name ends like a sequential node's (ten ASCII digits, as
/// ZooKeeper appends them). Counts bytes, not characters: the ten digits
/// are ASCII, so a name whose earlier bytes are multi-byte characters is
/// judged by its last ten bytes without ever slicing a `str`.
pub fn is_sequential_name(path: &str) -> bool {
    let bytes = name(path).as_bytes();
    bytes.len() >= 10 && bytes[bytes.len() - 10..].iter().all(u8::is_ascii_digit)
}

/// A path ZooKeeper accepts: absolute, no empty, `.` or `..` segments, no
/// trailing slash except for `/` itself, none of the characters its
/// `PathUtils` refuses (controls, U+D800–U+F8FF, U+FFF0–U+FFFF, and what
/// Java holds as surrogate pairs: everything above U+FFFF, emoji included).
pub fn validate(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not absolute"));
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest.ends_with('/') {
        return Err(format!("{path:?} ends with '/'"));
    }
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(format!("{path:?} has an empty segment"));
        }
        if segment == "." || segment == ".." {
            return Err(format!("{path:?} has a relative segment {segment:?}"));
        }
        if segment.chars().any(|c| !is_allowed_in_name(c)) {
            return Err(format!("{path:?} contains a character ZooKeeper refuses"));
        }
    }
    Ok(())
}

/// Whether ZooKeeper accepts `c` in a node name.
fn is_allowed_in_name(c: char) -> bool {
    c != '/' && !c.is_control() && !('\u{e000}'..='\u{f8ff}').contains(&c) && c < '\u{fff0}'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_join_and_split() {
        assert_eq!(join("/", ""), "/");
        assert_eq!(join("/", "a/b"), "/a/b");
        assert_eq!(join("/x", "a"), "/x/a");
        assert_eq!(relative("/x", "/x/a/b"), Some("a/b"));
        assert_eq!(relative("/x", "/x"), Some(""));
        assert_eq!(relative("/x", "/xy"), None);
        assert_eq!(relative("/", "/a"), Some("a"));
        assert_eq!(parent("a/b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
        assert_eq!(parent_absolute("/a/b"), Some("/a"));
        assert_eq!(parent_absolute("/a"), Some("/"));
        assert_eq!(parent_absolute("/"), None);
        assert_eq!(self_and_ancestors("a/b").collect::<Vec<_>>(), ["a/b", "a", ""]);
    }

    #[test]
    fn is_within_is_segment_aware() {
        assert!(is_within("/a/b", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
        assert!(is_within("w/17/leaf", "w/17") && is_within("w/17", "w/17"));
        assert!(!is_within("w/170", "w/17"));
    }

    #[test]
    fn sequential_names_with_multibyte_characters() {
        // The names that crashed the bridge: the last ten bytes start inside
        // a multi-byte character.
        for name in ["café-sequence", "Öl-pipeline", "ünïcödé", "a/ünïcödé"] {
            assert!(!is_sequential_name(name), "{name}");
        }
        assert!(is_sequential_name("café-0000000001"));
        assert!(is_sequential_name("q/ü0000000042"));
        assert!(is_sequential_name("🦀🦀0123456789"));
        assert!(!is_sequential_name("lock-000000001"));
        assert!(!is_sequential_name("0１23456789")); // a full-width digit
    }

    /// One valid node name: any Unicode ZooKeeper accepts, with the shapes
    /// that break byte slicing made likely.
    fn node_name() -> impl Strategy<Value = String> {
        let any_char = any::<char>().prop_filter("refused by ZooKeeper", |c| is_allowed_in_name(*c));
        let tricky = prop::sample::select(vec![
            "é", "Ö", "ü", "\u{301}", "\u{200d}", "\u{fe0f}", "中", "-", "0", "9", "١",
        ])
        .prop_map(str::to_string);
        let piece = prop_oneof![any_char.prop_map(String::from), tricky];
        (prop::collection::vec(piece, 1..14), prop::option::of("[0-9]{10}"))
            .prop_map(|(pieces, digits)| pieces.concat() + digits.as_deref().unwrap_or(""))
            .prop_filter("relative segment", |s| s != "." && s != "..")
    }

    #[test]
    fn names_zookeeper_refuses() {
        for path in [
            "/a/\u{1f980}",
            "/\u{e000}",
            "/x\u{fff0}",
            "/\u{7f}",
            "/a/",
            "/a//b",
            "/./a",
            "a",
        ] {
            assert!(validate(path).is_err(), "{path:?}");
        }
    }

    proptest! {
        /// Whatever a `str` holds, the name functions never panic.
        #[test]
        fn name_functions_take_any_string(s in ".*") {
            let _ = is_sequential_name(&s);
            let _ = name(&s);
            let _ = parent(&s);
            let _ = parent_absolute(&s);
            let _ = self_and_ancestors(&s).count();
            let _ = validate(&s);
        }

        #[test]
        fn every_path_function_takes_any_valid_name(
            names in prop::collection::vec(node_name(), 1..5),
            base_names in prop::collection::vec(node_name(), 0..3),
        ) {
            let rel = names.join("/");
            let base = if base_names.is_empty() { "/".to_string() } else { format!("/{}", base_names.join("/")) };
            prop_assert!(validate(&base).is_ok(), "{base:?}");
            let abs = join(&base, &rel);
            prop_assert!(validate(&abs).is_ok(), "{abs:?}");
            prop_assert_eq!(relative(&base, &abs), Some(rel.as_str()));
            prop_assert!(is_within(&abs, &base));
            prop_assert_eq!(name(&abs), names.last().unwrap().as_str());
            let chain: Vec<&str> = self_and_ancestors(&rel).collect();
            prop_assert_eq!(chain.len(), names.len() + 1);
            prop_assert_eq!(*chain.last().unwrap(), "");
            prop_assert_eq!(parent_absolute(&abs).map(|p| join(p, name(&abs))), Some(abs.clone()));
            let expected = {
                let chars: Vec<char> = names.last().unwrap().chars().collect();
                chars.len() >= 10 && chars[chars.len() - 10..].iter().all(|c| c.is_ascii_digit())
            };
            prop_assert_eq!(is_sequential_name(&rel), expected);
            prop_assert_eq!(is_sequential_name(&abs), expected);
        }
    }
}
