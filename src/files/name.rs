//! Class names become folder names (`save_images`, `sample`, `prep`, `synth`, the trainers'
//! outputs), so a class name must be one harmless path component: `"../../x"` in a
//! `classes.json` once made `sample` write outside its output folder (issue 16). Every place
//! that reads class names (a model's `classes.json`, `[run] classes`, image folder names, the
//! command line) checks them with [`check_class_name`].
//!
//! Names read from a file go into messages too (a zip member's name, a pickle's class, storage
//! and tensor names), and a message is one line: [`printable`] escapes the control characters
//! a hostile file can put in them.

/// Longest class name accepted, in bytes (folder names may be 255 bytes; a class name also
/// goes into temporary names, messages and figure labels).
pub const MAX_CLASS_NAME_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("class name {shown}: {reason}; expected one folder name (not empty, no \"/\" or \"\\\", not \".\" or \"..\", no leading \".\", no control characters, at most {MAX_CLASS_NAME_BYTES} bytes)")]
pub struct BadClassName {
    /// The name as written in messages (quoted, escaped, shortened).
    pub shown: String,
    pub reason: &'static str,
}

/// Ok when `name` is a valid single path component for a class folder.
pub fn check_class_name(name: &str) -> Result<(), BadClassName> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_CLASS_NAME_BYTES {
        Some("is too long")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name == "." || name == ".." {
        Some("is a relative folder reference")
    } else if name.starts_with('.') {
        Some("starts with \".\" (hidden folders are not classes)")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(BadClassName { shown: shown(name), reason }),
    }
}

/// Checks every name of a list; the first bad one is the error.
pub fn check_class_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), BadClassName> {
    names.into_iter().try_for_each(|n| check_class_name(n))
}

/// `text` from a file as it may appear in a one-line message: control characters (a newline, a
/// carriage return, an escape sequence's ESC) written as Rust escapes, everything else kept.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect::<String>().into()
    } else {
        text.into()
    }
}

/// `name` quoted and escaped for a one-line message, at most about 60 characters.
fn shown(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    match escaped.char_indices().nth(60) {
        Some((at, _)) => format!("\"{}…\"", &escaped[..at]),
        None => format!("\"{escaped}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_and_keeps_the_rest() {
        assert_eq!(printable("tiny_state_dict/data.pkl"), "tiny_state_dict/data.pkl");
        assert_eq!(printable("naïve \"quoted\""), "naïve \"quoted\"");
        assert_eq!(printable("tiny_state_d\nct/\r\x1b[2Jdata.pkl"), "tiny_state_d\\nct/\\r\\u{1b}[2Jdata.pkl");
        assert!(!printable("a\nb\u{85}c").chars().any(char::is_control));
    }

    #[test]
    fn single_components_pass_and_everything_else_is_refused_with_a_reason() {
        for ok in ["alice", "class_07", "Jean-Luc Picard", "naïve", "a.b", "x..y", &"n".repeat(MAX_CLASS_NAME_BYTES)] {
            assert_eq!(check_class_name(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "is empty"),
            ("../../x", "contains a path separator"),
            ("a/b", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("a\0b", "contains a NUL byte"),
            ("..", "is a relative folder reference"),
            (".", "is a relative folder reference"),
            (".hidden", "starts with \".\""),
            ("line\nbreak", "contains a control character"),
        ];
        for (bad, reason) in cases {
            let e = check_class_name(bad).unwrap_err();
            assert!(e.reason.starts_with(reason), "{bad:?}: {e}");
        }
        let e = check_class_name(&"n".repeat(MAX_CLASS_NAME_BYTES + 1)).unwrap_err();
        assert_eq!(e.reason, "is too long");
        assert!(e.shown.ends_with("…\""), "{}", e.shown);
        let e = check_class_name("a\nb").unwrap_err().to_string();
        assert!(e.starts_with("class name \"a\\nb\": contains a control character; expected one folder name"), "{e}");
        assert!(!e.contains('\n'));
    }
}
