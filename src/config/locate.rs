//! Where an error is: the file's TOML parsed with the line and dotted key
//! of whatever the parser or a later check refused.

use super::*;

/// The TOML parse and the shape check, with the line and key at fault.
pub(super) fn parse_file(name: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => {
                let (line, key) = locate_offset(text, span.start);
                (Some(line), key)
            }
            None => (None, None),
        };
        ConfigError {
            file: name.to_string(),
            line,
            key,
            message: e.message().to_string(),
        }
    })
}

/// The 1-based line of byte `offset`, and the dotted key written on it.
pub(super) fn locate_offset(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = section_header(t) {
            section = name;
            if i + 1 == line_no {
                key = Some(section.clone());
            }
        } else if i + 1 == line_no {
            if let Some((k, _)) = t.split_once('=') {
                let k = k.trim().trim_matches('"');
                key = Some(if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                });
            }
        }
        if i + 1 >= line_no {
            break;
        }
    }
    (line_no, key)
}

/// The line on which `leaf` is set inside `[section]`.
pub(super) fn locate_key(text: &str, section: &str, leaf: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = section_header(t) {
            current = name;
        } else if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == leaf {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

pub(super) fn section_header(t: &str) -> Option<String> {
    let inner = t.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim_matches('[').trim().to_string())
}
