//! Where an error is: the file's TOML parsed with the line and dotted key
//! of whatever the parser or a later check refused.

use super::*;
use crate::settings::check::locate_offset;

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
