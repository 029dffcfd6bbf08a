//! Parsing content in its declared format: to validate a publish, and to
//! deserialize it into the application's type.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::config::model::ConfigFormat;

/// Checks that `content` parses as `format`; the parser's message when not.
pub(crate) fn validate(format: ConfigFormat, content: &[u8]) -> Result<(), String> {
    match format {
        ConfigFormat::Json => serde_json::from_slice::<serde_json::Value>(content)
            .map(drop)
            .map_err(|e| e.to_string()),
        ConfigFormat::Yaml => serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(content)
            .map(drop)
            .map_err(|e| e.to_string()),
        ConfigFormat::Toml => toml::from_str::<toml::Table>(utf8(content)?)
            .map(drop)
            .map_err(|e| e.to_string()),
        ConfigFormat::Properties => properties(content).map(drop),
        ConfigFormat::Text => utf8(content).map(drop),
    }
}

/// Deserializes `content` (already validated or not) into `T`.
///
/// Properties become a flat map of strings (`T` is typically a struct of
/// `String` fields, or a map); text becomes one string.
pub(crate) fn deserialize<T: DeserializeOwned>(
    format: ConfigFormat,
    content: &[u8],
) -> Result<T, String> {
    match format {
        ConfigFormat::Json => serde_json::from_slice(content).map_err(|e| e.to_string()),
        ConfigFormat::Yaml => serde_yaml_ng::from_slice(content).map_err(|e| e.to_string()),
        ConfigFormat::Toml => toml::from_str(utf8(content)?).map_err(|e| e.to_string()),
        ConfigFormat::Properties => {
            let map = properties(content)?;
            let value = serde_json::Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
            );
            serde_json::from_value(value).map_err(|e| e.to_string())
        }
        ConfigFormat::Text => {
            let text = utf8(content)?.to_owned();
            serde_json::from_value(serde_json::Value::String(text)).map_err(|e| e.to_string())
        }
    }
}

fn utf8(content: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(content).map_err(|e| format!("not UTF-8: {e}"))
}

/// Java properties (ISO-8859-1 per the spec; this reads UTF-8, as
/// Java 9+ does for resource bundles).
fn properties(content: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = utf8(content)?;
    let mut map = BTreeMap::new();
    java_properties::PropertiesIter::new_with_encoding(text.as_bytes(), encoding_rs::UTF_8)
        .read_into(|k, v| {
            map.insert(k, v);
        })
        .map_err(|e| e.to_string())?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Settings {
        name: String,
        port: String,
    }

    #[test]
    fn each_format_accepts_good_and_refuses_bad_content() {
        let cases: [(ConfigFormat, &[u8], &[u8]); 5] = [
            (ConfigFormat::Json, br#"{"a": 1}"#, br#"{"a": 1"#),
            (ConfigFormat::Yaml, b"a: 1\nb: [1, 2]\n", b"a: [1, 2\n"),
            (ConfigFormat::Toml, b"a = 1\n[b]\nc = 'x'\n", b"a = \n"),
            (ConfigFormat::Properties, b"a=1\nb : two\n# c\n", b"a=\\u12"),
            (ConfigFormat::Text, b"anything", b"\xff\xfe"),
        ];
        for (format, good, bad) in cases {
            assert_eq!(validate(format, good), Ok(()), "{format} good");
            assert!(
                validate(format, bad).is_err(),
                "{format} accepted bad content"
            );
        }
    }

    #[test]
    fn properties_and_text_deserialize() {
        let s: Settings =
            deserialize(ConfigFormat::Properties, b"name = web\nport=8080\n").expect("props");
        assert_eq!(
            s,
            Settings {
                name: "web".into(),
                port: "8080".into()
            }
        );
        let t: String = deserialize(ConfigFormat::Text, b"hello").expect("text");
        assert_eq!(t, "hello");
        let y: Settings =
            deserialize(ConfigFormat::Yaml, b"name: web\nport: '80'\n").expect("yaml");
        assert_eq!(y.port, "80");
        assert!(deserialize::<Settings>(ConfigFormat::Json, br#"{"name":"x"}"#).is_err());
    }
}
