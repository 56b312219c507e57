//! Partial responses (`fields`), checked against the discovery schemas, and the JSON of a file.

use super::*;

/// A `fields` selection: `*`, or named fields with optional nested selections.
#[derive(Debug, PartialEq)]
pub(super) enum Selection {
    All,
    Fields(BTreeMap<String, Selection>),
}

/// Parses `a,b(c,d),e/f`. `None` when malformed (or absurdly long: the parser recurses).
pub(super) fn parse_fields(spec: &str) -> Option<Selection> {
    if spec.len() > 4096 {
        return None;
    }
    fn list(chars: &[char], at: &mut usize) -> Option<Selection> {
        let mut fields = BTreeMap::new();
        loop {
            let start = *at;
            while *at < chars.len() && !matches!(chars[*at], ',' | '(' | ')' | '/') {
                *at += 1;
            }
            let name: String = chars[start..*at]
                .iter()
                .collect::<String>()
                .trim()
                .to_owned();
            if name.is_empty() {
                return None;
            }
            let nested = match chars.get(*at) {
                Some('(') => {
                    *at += 1;
                    let inner = list(chars, at)?;
                    if chars.get(*at) != Some(&')') {
                        return None;
                    }
                    *at += 1;
                    inner
                }
                Some('/') => {
                    *at += 1;
                    let start = *at;
                    while *at < chars.len() && !matches!(chars[*at], ',' | ')') {
                        *at += 1;
                    }
                    let path: String = chars[start..*at].iter().collect();
                    parse_fields(&path)?
                }
                _ => Selection::All,
            };
            if name == "*" {
                return Some(Selection::All);
            }
            fields.insert(name, nested);
            match chars.get(*at) {
                Some(',') => *at += 1,
                _ => return Some(Selection::Fields(fields)),
            }
        }
    }
    let chars: Vec<char> = spec.chars().collect();
    let mut at = 0;
    let selection = list(&chars, &mut at)?;
    (at == chars.len()).then_some(selection)
}

pub(super) fn apply(value: &Value, selection: &Selection) -> Value {
    match (selection, value) {
        (Selection::All, v) => v.clone(),
        (Selection::Fields(_), Value::Array(items)) => {
            Value::Array(items.iter().map(|i| apply(i, selection)).collect())
        }
        (Selection::Fields(fields), Value::Object(map)) => Value::Object(
            fields
                .iter()
                .filter_map(|(k, sel)| map.get(k).map(|v| (k.clone(), apply(v, sel))))
                .collect(),
        ),
        (_, v) => v.clone(),
    }
}

/// Checks `selection`'s top-level (and `files(...)`) names against the discovery schema.
pub(super) fn check_fields(selection: &Selection, schema: &str) -> Result<(), String> {
    let known: Value = serde_json::from_str(SCHEMA_FIELDS).unwrap_or(Value::Null);
    let names = |schema: &str| -> Vec<String> {
        known
            .get(schema)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let Selection::Fields(fields) = selection else {
        return Ok(());
    };
    let allowed = names(schema);
    for (name, nested) in fields {
        if !allowed.contains(name) {
            return Err(name.clone());
        }
        if schema == "FileList" && name == "files" {
            check_fields(nested, "File")?;
        }
        if schema == "File" && name == "permissions" {
            check_fields(nested, "Permission")?;
        }
    }
    Ok(())
}

/// Renders `value` (a full resource of `schema`) for the request's `fields` or the defaults.
pub(super) fn partial(
    value: &Value,
    fields: Option<&str>,
    schema: &str,
    default: &str,
) -> Result<Value, Box<Response>> {
    let spec = fields.unwrap_or(default);
    let Some(selection) = parse_fields(spec) else {
        return Err(Box::new(bad_request(
            &format!("Invalid field selection {spec}"),
            Some(("parameter", "fields")),
        )));
    };
    if let Err(name) = check_fields(&selection, schema) {
        return Err(Box::new(bad_request(
            &format!("Invalid field selection {name}"),
            Some(("parameter", "fields")),
        )));
    }
    Ok(apply(value, &selection))
}

pub(super) const FILE_DEFAULT: &str = "kind,id,name,mimeType";
pub(super) const LIST_DEFAULT: &str =
    "kind,incompleteSearch,files(kind,id,name,mimeType),nextPageToken";
pub(super) const PERMISSION_DEFAULT: &str = "kind,id,type,role";

pub(super) fn file_json(file: &StoredFile) -> Value {
    json!({
        "kind": "drive#file",
        "id": file.id,
        "name": file.name,
        "mimeType": file.mime_type,
        "parents": file.parents,
        "appProperties": file.app_properties,
        "properties": file.properties,
        "size": file.size.to_string(),
        "sha256Checksum": file.sha256,
        "createdTime": file.created_time,
        "modifiedTime": file.created_time,
        "trashed": false,
        "webViewLink": format!("https://drive.google.com/file/d/{}/view?usp=drivesdk", file.id),
        "webContentLink": format!("https://drive.google.com/uc?id={}&export=download", file.id),
        "permissions": file.permissions,
        "owners": [{"kind": "drive#user", "emailAddress": file.owner, "me": true}],
    })
}

pub(super) fn respond(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

pub(super) type Params = Query<BTreeMap<String, String>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_selections() {
        let sel = parse_fields("nextPageToken,files(id,appProperties)").expect("parses");
        let Selection::Fields(top) = &sel else {
            panic!("expected fields")
        };
        assert!(top.contains_key("nextPageToken"));
        assert!(check_fields(&sel, "FileList").is_ok());
        assert_eq!(
            check_fields(&parse_fields("files(idd)").expect("parses"), "FileList"),
            Err("idd".into())
        );
        assert_eq!(parse_fields("files(id"), None);
    }
}
