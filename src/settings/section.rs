//! A provider's config section, `[providers.<name>]`, as its plug-in reads
//! it: deserialized from the file itself (so a wrong key or type names its
//! line), checked, and with its secrets resolved the way every secret is.

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::check::ConfigError;
use super::check::{check_url, locate_key, locate_offset, validate_polling, validate_reconcile};
use super::{PollingConfig, ReconcileConfig, Secret};

/// Looks up a secret: the key that names it (for errors) and the variable
/// or credential name.
pub type SecretLookup<'a> = dyn Fn(&str, &str) -> Result<Secret, ConfigError> + 'a;

/// One `[providers.<name>]` section of one config file.
pub struct Section<'a> {
    /// `providers.<name>`.
    path: String,
    /// The file's name, for errors.
    file: &'a str,
    text: &'a str,
    secret: &'a SecretLookup<'a>,
}

impl<'a> Section<'a> {
    pub fn new(file: &'a str, text: &'a str, name: &str, secret: &'a SecretLookup<'a>) -> Self {
        Section {
            path: format!("providers.{name}"),
            file,
            text,
            secret,
        }
    }

    /// The section as `T`, or `None` when the file has no such section.
    pub fn read<T: DeserializeOwned>(&self) -> Result<Option<T>, ConfigError> {
        let path: Vec<&str> = self.path.split('.').collect();
        let de = toml::Deserializer::new(self.text);
        Pick::<T>::new(&path).deserialize(de).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => {
                    let (line, key) = locate_offset(self.text, span.start);
                    (Some(line), key)
                }
                None => (None, Some(self.path.clone())),
            };
            ConfigError {
                file: self.file.to_string(),
                line,
                key,
                message: e.message().to_string(),
            }
        })
    }

    /// An error at `leaf` (`base_url`, `polling.max_in_flight`) of this
    /// section, with the line it is set on.
    pub fn error(&self, leaf: &str, message: impl Into<String>) -> ConfigError {
        let key = format!("{}.{leaf}", self.path);
        let (section, last) = key.rsplit_once('.').unwrap_or(("", &key));
        ConfigError {
            file: self.file.to_string(),
            line: locate_key(self.text, section, last),
            key: Some(key.clone()),
            message: message.into(),
        }
    }

    /// The secret that `leaf` (`token_env`) names by `var`.
    pub fn secret(&self, leaf: &str, var: &str) -> Result<Secret, ConfigError> {
        (self.secret)(&format!("{}.{leaf}", self.path), var)
    }

    /// A checked `base_url` (http or https), without a trailing `/`.
    pub fn base_url(&self, url: &str) -> Result<String, ConfigError> {
        check_url(url, &self.path, &|k, m| self.keyed(k, m))?;
        Ok(url.trim_end_matches('/').to_string())
    }

    /// A path below `base_url` (`login_path`): it must start with `/`.
    pub fn url_path(&self, leaf: &str, path: String) -> Result<String, ConfigError> {
        if path.starts_with('/') {
            Ok(path)
        } else {
            Err(self.error(leaf, "must start with /"))
        }
    }

    /// Checks `[<section>.polling]`.
    pub fn polling(&self, p: &PollingConfig) -> Result<(), ConfigError> {
        validate_polling(p, &format!("{}.polling", self.path), &|k, m| {
            self.keyed(k, m)
        })
    }

    /// Checks `[<section>.reconcile]`.
    pub fn reconcile(&self, r: &ReconcileConfig) -> Result<(), ConfigError> {
        validate_reconcile(r, &format!("{}.reconcile", self.path), &|k, m| {
            self.keyed(k, m)
        })
    }

    /// An error at a full dotted key.
    fn keyed(&self, key: &str, message: String) -> ConfigError {
        let leaf = key
            .strip_prefix(&self.path)
            .and_then(|l| l.strip_prefix('.'))
            .unwrap_or(key);
        self.error(leaf, message)
    }
}

/// Deserializes the value at a dotted path of a TOML document and skips
/// everything else, inside the document's own deserializer so that errors
/// keep their place in the file.
struct Pick<'p, T> {
    path: &'p [&'p str],
    _t: PhantomData<T>,
}

impl<'p, T> Pick<'p, T> {
    fn new(path: &'p [&'p str]) -> Self {
        Pick {
            path,
            _t: PhantomData,
        }
    }
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Pick<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        if self.path.is_empty() {
            return T::deserialize(d).map(Some);
        }
        d.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Pick<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a table with `{}`", self.path.join("."))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.path[0] {
                found = map.next_value_seed(Pick::<T>::new(&self.path[1..]))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        base_url: String,
        #[serde(default)]
        n: u32,
    }

    fn no_secrets(key: &str, var: &str) -> Result<Secret, ConfigError> {
        Err(ConfigError {
            file: "c.toml".into(),
            line: None,
            key: Some(key.into()),
            message: format!("no `{var}`"),
        })
    }

    const TEXT: &str = "[store]\npath = \"x\"\n\n[providers.demo]\nbase_url = \"http://h/\"\nn = 3\n\n[providers.other]\nz = 1\n";

    #[test]
    fn a_section_is_read_from_its_place_and_others_are_skipped() {
        let s = Section::new("c.toml", TEXT, "demo", &no_secrets);
        let d: Demo = s.read().unwrap().unwrap();
        assert_eq!(
            d,
            Demo {
                base_url: "http://h/".into(),
                n: 3
            }
        );
        assert_eq!(s.base_url(&d.base_url).unwrap(), "http://h");
        let absent = Section::new("c.toml", TEXT, "missing", &no_secrets);
        assert_eq!(absent.read::<Demo>().unwrap(), None);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let bad = TEXT.replace("n = 3", "m = 3");
        let e = Section::new("c.toml", &bad, "demo", &no_secrets)
            .read::<Demo>()
            .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(6), Some("providers.demo.m"))
        );
        assert!(e.message.contains("unknown field"), "{e}");
        let s = Section::new("c.toml", TEXT, "demo", &no_secrets);
        let e = s.base_url("ftp://h").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(5), Some("providers.demo.base_url"))
        );
        let e = s.secret("key_env", "DEMO_KEY").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("providers.demo.key_env"));
        assert!(e.message.contains("DEMO_KEY"));
    }
}
