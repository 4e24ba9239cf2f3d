//! The `api_image_import` task input as glance-api writes it
//! (`{image_id, import_req: {method: {name, uri?}, stores?, all_stores?,
//! all_stores_must_succeed?}, backend: [stores]}`), validated before the
//! image is touched. Every refusal names the field, so the task's message
//! says what the producer got wrong.

use serde_json::{Map, Value};

use crate::import::ImportFailure;

/// The import method of `import_req.method.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Data already staged by `PUT /v2/images/{id}/stage`.
    GlanceDirect,
    /// Data downloaded from `import_req.method.uri`.
    WebDownload {
        /// The source URL.
        uri: String,
    },
    /// An active image's data copied to more stores.
    CopyImage,
}

impl Method {
    /// The name glance-api uses.
    pub fn name(&self) -> &'static str {
        match self {
            Method::GlanceDirect => "glance-direct",
            Method::WebDownload { .. } => "web-download",
            Method::CopyImage => "copy-image",
        }
    }
}

/// A validated input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiImportInput {
    /// The target image.
    pub image_id: String,
    /// What to import.
    pub method: Method,
    /// The resolved target stores (`backend`); `None` is the single store
    /// of a deployment without `enabled_backends`.
    pub stores: Vec<Option<String>>,
    /// `import_req.all_stores_must_succeed` (default true).
    pub all_stores_must_succeed: bool,
}

impl ApiImportInput {
    /// The named target stores (empty in single-store mode).
    pub fn store_names(&self) -> Vec<String> {
        self.stores.iter().flatten().cloned().collect()
    }
}

/// What the input is checked against.
pub struct InputRules<'a> {
    /// `[DEFAULT] enabled_import_methods`.
    pub enabled_methods: &'a [String],
    /// Names of the enabled (non-reserved) backends in multi-store mode;
    /// `None` in single-store mode.
    pub backends: Option<&'a [String]>,
}

fn bad<T>(msg: impl Into<String>) -> Result<T, ImportFailure> {
    Err(ImportFailure::Failed(format!(
        "invalid api_image_import input: {}",
        msg.into()
    )))
}

fn object<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a Map<String, Value>, ImportFailure> {
    match v {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => bad(format!("{field} must be an object")),
        None => bad(format!("{field} is missing")),
    }
}

fn flag(
    m: &Map<String, Value>,
    key: &str,
    field: &str,
    default: bool,
) -> Result<bool, ImportFailure> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => bad(format!("{field} must be a boolean")),
    }
}

/// Whether `s` has the form of the uuid4 ids Glance gives images.
fn looks_like_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Reads the image id alone (to release the lock of a task whose input is
/// otherwise unusable).
pub fn image_id_of(input: Option<&Value>) -> Option<String> {
    input?
        .get("image_id")?
        .as_str()
        .filter(|s| looks_like_uuid(s))
        .map(str::to_string)
}

/// Validates a task input; `column_image_id` is `tasks.image_id`, which the
/// API fills from the same input.
pub fn parse(
    input: Option<&Value>,
    column_image_id: Option<&str>,
    rules: &InputRules<'_>,
) -> Result<ApiImportInput, ImportFailure> {
    let top = object(input, "task input")?;
    let image_id = match top.get("image_id") {
        Some(Value::String(s)) if looks_like_uuid(s) => s.clone(),
        Some(Value::String(s)) => return bad(format!("image_id {s:?} is not an image id")),
        Some(_) => return bad("image_id must be a string"),
        None => return bad("image_id is missing"),
    };
    if let Some(col) = column_image_id
        && col != image_id
    {
        return bad(format!(
            "image_id {image_id} differs from the task's image_id column {col}"
        ));
    }
    let req = object(top.get("import_req"), "import_req")?;
    let method = object(req.get("method"), "import_req.method")?;
    let name = match method.get("name") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return bad("import_req.method.name must be a string"),
        None => return bad("import_req.method.name is missing"),
    };
    let method = match name {
        "glance-direct" => Method::GlanceDirect,
        "copy-image" => Method::CopyImage,
        "web-download" => match method.get("uri") {
            Some(Value::String(u)) if !u.is_empty() => Method::WebDownload { uri: u.clone() },
            Some(_) => return bad("import_req.method.uri must be a non-empty string"),
            None => return bad("import_req.method.uri is missing (required by web-download)"),
        },
        "glance-download" => {
            return bad("import_req.method.name glance-download is not supported by imaged-tasks");
        }
        other => {
            return bad(format!(
                "import_req.method.name {other:?} is not an import method"
            ));
        }
    };
    if !rules.enabled_methods.iter().any(|m| m == method.name()) {
        return bad(format!(
            "import_req.method.name {} is not in enabled_import_methods ({})",
            method.name(),
            rules.enabled_methods.join(", ")
        ));
    }
    let all_stores = flag(req, "all_stores", "import_req.all_stores", false)?;
    let all_must = flag(
        req,
        "all_stores_must_succeed",
        "import_req.all_stores_must_succeed",
        true,
    )?;
    let requested: Option<Vec<String>> = match req.get("stores") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut v = Vec::new();
            for s in a {
                match s {
                    Value::String(s) if !s.is_empty() => v.push(s.clone()),
                    _ => return bad("import_req.stores must be a list of store names"),
                }
            }
            Some(v)
        }
        Some(_) => return bad("import_req.stores must be a list"),
    };
    if all_stores && requested.is_some() {
        return bad("import_req.all_stores cannot be combined with import_req.stores");
    }
    let stores: Vec<Option<String>> = match top.get("backend") {
        None | Some(Value::Null) => vec![None],
        Some(Value::Array(a)) if a.is_empty() => return bad("backend must not be empty"),
        Some(Value::Array(a)) => {
            let mut v = Vec::new();
            for s in a {
                match s {
                    Value::Null => v.push(None),
                    Value::String(s) if !s.is_empty() => {
                        if v.contains(&Some(s.clone())) {
                            return bad(format!("backend lists store {s:?} twice"));
                        }
                        v.push(Some(s.clone()));
                    }
                    _ => return bad("backend must be a list of store names"),
                }
            }
            v
        }
        Some(_) => return bad("backend must be a list"),
    };
    match rules.backends {
        None => {
            if stores.iter().any(Option::is_some) {
                return bad(
                    "backend names stores, but enabled_backends is not configured (single-store mode)",
                );
            }
            if stores.len() != 1 {
                return bad("backend must be [null] in single-store mode");
            }
            if requested.is_some() || all_stores {
                return bad("import_req.stores / all_stores need enabled_backends");
            }
            if !all_must {
                return bad("import_req.all_stores_must_succeed=false needs enabled_backends");
            }
            if method == Method::CopyImage {
                return bad("import_req.method.name copy-image needs enabled_backends");
            }
        }
        Some(enabled) => {
            if stores.iter().any(Option::is_none) {
                return bad("backend contains null, but enabled_backends is configured");
            }
            for s in stores.iter().flatten() {
                if s.starts_with("os_glance_") {
                    return bad(format!("backend store {s:?} is a reserved store"));
                }
                if !enabled.iter().any(|e| e == s) {
                    return bad(format!(
                        "backend store {s:?} is not in enabled_backends ({})",
                        enabled.join(", ")
                    ));
                }
            }
            if let Some(req_stores) = &requested {
                let mut a: Vec<&String> = req_stores.iter().collect();
                let mut b: Vec<&String> = stores.iter().flatten().collect();
                a.sort();
                a.dedup();
                b.sort();
                if a != b {
                    return bad(format!(
                        "backend [{}] does not match import_req.stores [{}]",
                        b.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                        a.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    Ok(ApiImportInput {
        image_id,
        method,
        stores,
        all_stores_must_succeed: all_must,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "0b6d4b64-5a3e-4f6f-9d3c-2f1f1f1f1f1f";

    fn rules<'a>(methods: &'a [String], backends: Option<&'a [String]>) -> InputRules<'a> {
        InputRules {
            enabled_methods: methods,
            backends,
        }
    }

    fn methods() -> Vec<String> {
        vec![
            "glance-direct".into(),
            "web-download".into(),
            "copy-image".into(),
        ]
    }

    fn msg(r: Result<ApiImportInput, ImportFailure>) -> String {
        match r {
            Err(ImportFailure::Failed(m)) => m,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn single_store_web_download() {
        let m = methods();
        let v = json!({"image_id": ID, "import_req": {"method": {"name": "web-download", "uri": "https://x/y"}}, "backend": [null]});
        let i = parse(Some(&v), Some(ID), &rules(&m, None)).unwrap();
        assert_eq!(i.stores, vec![None]);
        assert!(i.all_stores_must_succeed);
        assert_eq!(
            i.method,
            Method::WebDownload {
                uri: "https://x/y".into()
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let m = methods();
        let b = vec!["a".to_string(), "b".to_string()];
        let multi = rules(&m, Some(&b));
        let cases = [
            (json!({"import_req": {}}), "image_id is missing"),
            (json!({"image_id": "x", "import_req": {}}), "image_id \"x\""),
            (json!({"image_id": ID}), "import_req is missing"),
            (
                json!({"image_id": ID, "import_req": {"method": 3}}),
                "import_req.method must be an object",
            ),
            (
                json!({"image_id": ID, "import_req": {"method": {}}}),
                "import_req.method.name is missing",
            ),
            (
                json!({"image_id": ID, "import_req": {"method": {"name": "web-download"}}, "backend": ["a"]}),
                "import_req.method.uri is missing",
            ),
            (
                json!({"image_id": ID, "import_req": {"method": {"name": "glance-direct"}, "stores": ["a"]}, "backend": ["b"]}),
                "does not match import_req.stores",
            ),
            (
                json!({"image_id": ID, "import_req": {"method": {"name": "glance-direct"}}, "backend": ["c"]}),
                "backend store \"c\" is not in enabled_backends",
            ),
            (
                json!({"image_id": ID, "import_req": {"method": {"name": "glance-direct"}, "all_stores_must_succeed": "no"}, "backend": ["a"]}),
                "import_req.all_stores_must_succeed must be a boolean",
            ),
            (
                json!({"image_id": ID, "import_req": {"method": {"name": "glance-direct"}}, "backend": [null]}),
                "backend contains null",
            ),
        ];
        for (v, want) in cases {
            let got = msg(parse(Some(&v), None, &multi));
            assert!(got.contains(want), "{v}: {got}");
        }
        let single = rules(&m, None);
        let v = json!({"image_id": ID, "import_req": {"method": {"name": "copy-image"}}});
        assert!(msg(parse(Some(&v), None, &single)).contains("copy-image needs enabled_backends"));
        let v = json!({"image_id": ID, "import_req": {"method": {"name": "glance-direct"}}});
        assert!(msg(parse(Some(&v), Some("other"), &single)).contains("image_id column"));
        let only = vec!["glance-direct".to_string()];
        let v = json!({"image_id": ID, "import_req": {"method": {"name": "web-download", "uri": "http://x/"}}});
        assert!(msg(parse(Some(&v), None, &rules(&only, None))).contains("enabled_import_methods"));
    }

    #[test]
    fn multi_store_lists() {
        let m = methods();
        let b = vec!["a".to_string(), "b".to_string()];
        let v = json!({"image_id": ID, "import_req": {"method": {"name": "copy-image"}, "stores": ["b", "a"], "all_stores_must_succeed": false}, "backend": ["a", "b"]});
        let i = parse(Some(&v), None, &rules(&m, Some(&b))).unwrap();
        assert_eq!(i.store_names(), vec!["a", "b"]);
        assert!(!i.all_stores_must_succeed);
        assert_eq!(i.method, Method::CopyImage);
    }
}
