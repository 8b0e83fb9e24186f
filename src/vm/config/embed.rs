//! `base:` embedding, done once when an instance is created from a template
//! (Lima's `limatmpl.Embed`), on YAML nodes so unknown keys survive. Each base
//! is embedded recursively and merged into the child: fields the child lacks
//! are copied, lists are appended (`base`, `provision` and `probes` are
//! prepended), `dns` is only taken when the child has none, and
//! `minimumLimaVersion` takes the higher value. Afterwards `mounts`,
//! `additionalDisks` and `networks` entries with the same key are combined.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::{ConfigError, parse, parse_value, version_less};

/// Where `template:NAME` locators are searched, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct TemplateSearch {
    pub dirs: Vec<PathBuf>,
}

impl TemplateSearch {
    /// `$LIMA_TEMPLATES_PATH` (colon-separated) when set, else
    /// `$LIMA_HOME/_templates`, as Lima looks them up.
    pub(crate) fn from_env(lima_home: &Path) -> Self {
        let dirs = match std::env::var_os("LIMA_TEMPLATES_PATH").filter(|v| !v.is_empty()) {
            Some(v) => std::env::split_paths(&v).collect(),
            None => vec![crate::vm::dirs::templates_dir(lima_home)],
        };
        TemplateSearch { dirs }
    }

    fn find(&self, name: &str) -> Result<PathBuf, String> {
        if name.contains("..") {
            return Err(format!("template name {name:?} must not contain `..`"));
        }
        // Lima appends `.yaml` unless the name has a real extension
        // (`alpine-3.21` has none: a digit starts it).
        let ext = Path::new(name)
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = if ext.is_empty() || ext.starts_with(|c: char| c.is_ascii_digit()) {
            format!("{name}.yaml")
        } else {
            name.to_string()
        };
        self.dirs
            .iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "template {name:?} not found in {}; set LIMA_TEMPLATES_PATH or put it in \
                     $LIMA_HOME/_templates",
                    self.dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                )
            })
    }
}

/// Embeds all bases of the template at `path`. With `default_base`,
/// `$LIMA_HOME/_config/base.yaml` (when it exists) goes first, as at create.
/// The result has no `base` key.
pub(crate) fn embed_file(
    path: &Path,
    search: &TemplateSearch,
    default_base: Option<&Path>,
) -> Result<Mapping, ConfigError> {
    let (path, text) = read_template(path)?;
    embed_str(&text, &path, search, default_base)
}

/// Reads a template, following git's stand-in for a symlink (a file whose
/// whole content is a sibling's name, as checked out with
/// `core.symlinks=false`); Lima's template tree uses such aliases.
fn read_template(path: &Path) -> Result<(PathBuf, String), ConfigError> {
    let mut path = path.to_path_buf();
    for _ in 0..8 {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let target = text.trim();
        let is_alias = !target.contains(['\n', ':', ' '])
            && (target.ends_with(".yaml") || target.ends_with(".yml"));
        let next = path.parent().unwrap_or(Path::new(".")).join(target);
        if !(is_alias && next.is_file()) {
            return Ok((path, text));
        }
        path = next;
    }
    Err(ConfigError::Invalid {
        path,
        field: "(document)".into(),
        message: "is reached through more than 8 file aliases; point to the template itself".into(),
    })
}

/// Like [`embed_file`] for text already read; `path` locates relative bases
/// and names the file in errors.
pub(crate) fn embed_str(
    text: &str,
    path: &Path,
    search: &TemplateSearch,
    default_base: Option<&Path>,
) -> Result<Mapping, ConfigError> {
    let mut doc = as_mapping(typed_check(text, path)?, path)?;
    if let Some(b) = default_base.filter(|b| b.is_file()) {
        let mut list = vec![Value::String(b.to_string_lossy().into_owned())];
        list.extend(base_locators(doc.get("base")));
        doc.insert("base".into(), Value::Sequence(list));
    }
    let mut seen = HashSet::new();
    embed_all(&mut doc, path, search, &mut seen)?;
    combine_lists(&mut doc);
    Ok(doc)
}

/// The document as YAML nodes, after checking it also reads as lima.yaml
/// fields so type errors point at the right file, line and column (the
/// merged document has no positions).
fn typed_check(text: &str, path: &Path) -> Result<Value, ConfigError> {
    let v = parse_value(text, path)?;
    if v.is_mapping() {
        parse(text, path)?;
    }
    Ok(v)
}

fn as_mapping(v: Value, path: &Path) -> Result<Mapping, ConfigError> {
    match v {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "(document)".into(),
            message: "must be a YAML mapping of lima.yaml fields".into(),
        }),
    }
}

/// `base` as a list of nodes: a string becomes a one-entry list.
fn base_locators(base: Option<&Value>) -> Vec<Value> {
    match base {
        None | Some(Value::Null) => vec![],
        Some(Value::Sequence(s)) => s.clone(),
        Some(other) => vec![other.clone()],
    }
}

fn embed_all(
    doc: &mut Mapping,
    path: &Path,
    search: &TemplateSearch,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        field: "base".into(),
        message,
    };
    inline_scripts(doc, path, search)?;
    // Bases are merged one at a time, first entry first, as Lima does.
    let locators = base_locators(doc.remove("base").as_ref());
    for loc in locators {
        let locator = match &loc {
            Value::String(s) => s.clone(),
            Value::Mapping(m) => {
                if m.get("digest").is_some_and(|d| !d.is_null()) {
                    return Err(invalid(
                        "entries with a `digest` are not supported yet; remove the digest".into(),
                    ));
                }
                m.get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("entries must be strings or {url: ...}".into()))?
                    .to_string()
            }
            _ => return Err(invalid("entries must be strings or {url: ...}".into())),
        };
        let base_path = resolve_locator(&locator, path, search).map_err(&invalid)?;
        let key = std::fs::canonicalize(&base_path).unwrap_or(base_path.clone());
        if !seen.insert(key) {
            return Err(invalid(format!(
                "base template loop: {locator:?} is already included"
            )));
        }
        let (base_path, text) = read_template(&base_path)?;
        let mut base = as_mapping(typed_check(&text, &base_path)?, &base_path)?;
        embed_all(&mut base, &base_path, search, seen)?;
        merge_base(doc, base);
    }
    Ok(())
}

/// `provision[].file` and `probes[].file` are read (relative to the template
/// that names them) and stored as the entry's script, or as `content` for
/// `data` and `expression` for `yq` provisioning.
fn inline_scripts(
    doc: &mut Mapping,
    path: &Path,
    search: &TemplateSearch,
) -> Result<(), ConfigError> {
    for list in ["provision", "probes"] {
        let Some(Value::Sequence(entries)) = doc.get_mut(list) else {
            continue;
        };
        for (i, entry) in entries.iter_mut().enumerate() {
            let Some(m) = entry.as_mapping_mut() else {
                continue;
            };
            let invalid = |message: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                field: format!("{list}[{i}].file"),
                message,
            };
            let locator = match m.get("file") {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Mapping(f)) => {
                    if f.get("digest").is_some_and(|d| !d.is_null()) {
                        return Err(invalid("a `digest` is not supported yet; remove it".into()));
                    }
                    f.get("url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid("must be a path or {url: ...}".into()))?
                        .to_string()
                }
                Some(_) => return Err(invalid("must be a path or {url: ...}".into())),
            };
            let target = match m.get("mode").and_then(Value::as_str) {
                Some("data") if list == "provision" => "content",
                Some("yq") if list == "provision" => "expression",
                _ => "script",
            };
            if m.get(target)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                continue;
            }
            let file = resolve_locator(&locator, path, search).map_err(&invalid)?;
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            m.remove("file");
            m.insert(target.into(), Value::String(text));
        }
    }
    Ok(())
}

/// A locator as a file: `template:NAME` through the search path, a
/// `file://` URL, or a path relative to the including file.
fn resolve_locator(
    loc: &str,
    including: &Path,
    search: &TemplateSearch,
) -> Result<PathBuf, String> {
    if let Some(name) = loc.strip_prefix("template:") {
        return search.find(name.trim_start_matches('/'));
    }
    if let Some(p) = loc.strip_prefix("file://") {
        return Ok(PathBuf::from(p));
    }
    if loc.contains("://") {
        return Err(format!(
            "remote base {loc:?} is not supported; download it and refer to the local file"
        ));
    }
    let p = Path::new(loc);
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        let dir = including.parent().unwrap_or(Path::new("."));
        Ok(dir.join(p))
    }
}

fn merge_base(doc: &mut Mapping, base: Mapping) {
    let child_min = doc
        .get("minimumLimaVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let base_min = base
        .get("minimumLimaVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let child_qemu = qemu_min(doc);
    let base_qemu = qemu_min(&base);
    merge_nodes(doc, base, true);
    if let (Some(c), Some(b)) = (child_min, base_min)
        && version_less(&c, &b)
    {
        doc.insert("minimumLimaVersion".into(), Value::String(b));
    }
    if let (Some(c), Some(b)) = (child_qemu, base_qemu)
        && version_less(&c, &b)
        && let Some(Value::Mapping(q)) = doc
            .get_mut("vmOpts")
            .and_then(|v| v.as_mapping_mut())
            .and_then(|m| m.get_mut("qemu"))
    {
        q.insert("minimumVersion".into(), Value::String(b));
    }
    if let Some(Value::Sequence(s)) = doc.get_mut("mountTypesUnsupported") {
        let mut seen = Vec::new();
        s.retain(|v| {
            let new = !seen.contains(v);
            seen.push(v.clone());
            new
        });
    }
}

fn qemu_min(m: &Mapping) -> Option<String> {
    m.get("vmOpts")?
        .get("qemu")?
        .get("minimumVersion")?
        .as_str()
        .map(str::to_string)
}

/// The child keeps every value it has (even null); maps merge recursively,
/// lists concatenate.
fn merge_nodes(child: &mut Mapping, base: Mapping, top: bool) {
    for (k, bv) in base {
        let key = k.as_str().unwrap_or("");
        if top && key == "base" {
            continue;
        }
        match child.get_mut(&k) {
            None => {
                child.insert(k, bv);
            }
            Some(Value::Mapping(c)) => {
                if let Value::Mapping(b) = bv {
                    merge_nodes(c, b, false);
                }
            }
            Some(Value::Sequence(c)) => {
                if let Value::Sequence(b) = bv {
                    if top && key == "dns" && !c.is_empty() {
                        continue;
                    }
                    if top && (key == "provision" || key == "probes") {
                        let mut merged = b;
                        merged.append(c);
                        *c = merged;
                    } else {
                        c.extend(b);
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// Entries of `mounts`, `additionalDisks` and `networks` that share a key
/// are folded into the first one (fields it lacks are copied from the
/// later one); a key of `*` applies to every earlier entry.
fn combine_lists(doc: &mut Mapping) {
    let mount_fields: &[&[&str]] = &[
        &["mountPoint"],
        &["writable"],
        &["sshfs", "cache"],
        &["sshfs", "followSymlinks"],
        &["sshfs", "sftpDriver"],
        &["9p", "securityModel"],
        &["9p", "protocolVersion"],
        &["9p", "msize"],
        &["9p", "cache"],
        &["virtiofs", "queueSize"],
    ];
    combine(doc, "mounts", mount_key, mount_fields);
    combine(
        doc,
        "additionalDisks",
        |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => v.get("name")?.as_str().map(str::to_string),
        },
        &[&["format"], &["fsType"], &["fsArgs"]],
    );
    combine(
        doc,
        "networks",
        |v| v.get("interface")?.as_str().map(str::to_string),
        &[&["macAddress"], &["vzNAT"], &["metric"]],
    );
}

fn mount_key(v: &Value) -> Option<String> {
    v.get("mountPoint")
        .and_then(Value::as_str)
        .or_else(|| v.get("location").and_then(Value::as_str))
        .map(str::to_string)
}

fn is_unset(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Sequence(s)) => s.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}

fn set_path(v: &mut Value, path: &[&str], new: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = v;
    for p in parents {
        let m = cur.as_mapping_mut().expect("list entries are maps here");
        let child = m
            .entry((*p).into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !child.is_mapping() {
            *child = Value::Mapping(Mapping::new());
        }
        cur = child;
    }
    if let Some(m) = cur.as_mapping_mut() {
        m.insert((*last).into(), new);
    }
}

fn combine(doc: &mut Mapping, list: &str, key: fn(&Value) -> Option<String>, fields: &[&[&str]]) {
    let Some(Value::Sequence(entries)) = doc.get_mut(list) else {
        return;
    };
    let mut src = 0;
    while src < entries.len() {
        let k = key(&entries[src]);
        let targets: Vec<usize> = match k.as_deref() {
            Some("*") => (0..src).collect(),
            Some(k) if !k.is_empty() => (0..src)
                .find(|&i| key(&entries[i]).as_deref() == Some(k))
                .into_iter()
                .collect(),
            _ => vec![],
        };
        if targets.is_empty() && k.as_deref() != Some("*") {
            src += 1;
            continue;
        }
        let from = entries[src].clone();
        for dst in targets {
            let dest = &mut entries[dst];
            if let Value::String(name) = dest {
                // A bare disk name grows into a map to take the fields.
                let mut m = Mapping::new();
                m.insert("name".into(), Value::String(name.clone()));
                *dest = Value::Mapping(m);
            }
            if list == "networks" && is_unset(dest.get("lima")) && is_unset(dest.get("socket")) {
                for f in ["lima", "socket"] {
                    if let Some(v) = from.get(f).filter(|v| !is_unset(Some(v))) {
                        set_path(dest, &[f], v.clone());
                    }
                }
            }
            for path in fields {
                if is_unset(get_path(dest, path))
                    && let Some(v) = get_path(&from, path).filter(|v| !is_unset(Some(v)))
                {
                    set_path(dest, path, v.clone());
                }
            }
        }
        entries.remove(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Mapping {
        serde_yaml::from_str(s).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn merge_copies_missing_appends_lists_prepends_provision() {
        let mut child = yaml(
            "cpus: 2\nmemory: null\nimages: [{location: c}]\nprovision: [{script: c}]\n\
             dns: [1.1.1.1]\nssh: {forwardAgent: true}\nminimumLimaVersion: 1.0.0\n",
        );
        let base = yaml(
            "cpus: 8\nmemory: 9GiB\ndisk: 5GiB\nimages: [{location: b}]\n\
             provision: [{script: b}]\ndns: [8.8.8.8]\nssh: {forwardAgent: false, localPort: 2222}\n\
             minimumLimaVersion: 2.0.0\n",
        );
        merge_base(&mut child, base);
        let want = yaml(
            "cpus: 2\nmemory: null\nimages: [{location: c}, {location: b}]\n\
             provision: [{script: b}, {script: c}]\ndns: [1.1.1.1]\n\
             ssh: {forwardAgent: true, localPort: 2222}\nminimumLimaVersion: 2.0.0\ndisk: 5GiB\n",
        );
        assert_eq!(child, want);
    }

    #[test]
    fn combines_mounts_disks_networks_by_key() {
        let mut doc = yaml(
            "mounts:\n- {location: /a}\n- {location: /b, mountPoint: /m}\n\
             - {location: /a, writable: true, 9p: {cache: none}}\n- {location: /c, mountPoint: /m, writable: false}\n\
             additionalDisks: [d1, {name: d1, format: false}]\n\
             networks: [{interface: e1}, {interface: e1, lima: shared, metric: 5}]\n",
        );
        combine_lists(&mut doc);
        let want = yaml(
            "mounts:\n- {location: /a, writable: true, 9p: {cache: none}}\n\
             - {location: /b, mountPoint: /m, writable: false}\n\
             additionalDisks: [{name: d1, format: false}]\n\
             networks: [{interface: e1, lima: shared, metric: 5}]\n",
        );
        assert_eq!(doc, want);
    }

    #[test]
    fn embeds_template_relative_and_absolute_bases_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let tdir = dir.path().join("templates");
        write(
            &tdir,
            "_images/img.yaml",
            "images: [{location: /img, arch: x86_64}]\n",
        );
        write(&tdir, "_default/mounts.yaml", "mounts: [{location: '~'}]\n");
        write(
            dir.path(),
            "lib/mid.yaml",
            "base: [template:_images/img]\nprovision: [{script: mid}]\n",
        );
        let abs = write(dir.path(), "abs.yaml", "cpus: 3\n");
        let top = write(
            dir.path(),
            "top.yaml",
            &format!(
                "base:\n- lib/mid.yaml\n- template:_default/mounts\n- {}\nprovision: [{{script: top}}]\n",
                abs.display()
            ),
        );
        let search = TemplateSearch {
            dirs: vec![dir.path().join("none"), tdir],
        };
        let out = embed_file(&top, &search, None).unwrap();
        assert!(out.get("base").is_none());
        assert_eq!(
            out,
            yaml(
                "provision: [{script: mid}, {script: top}]\nimages: [{location: /img, arch: x86_64}]\n\
                 mounts: [{location: '~'}]\ncpus: 3\n"
            )
        );
    }

    #[test]
    fn external_scripts_are_inlined_relative_to_their_template() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "lib/setup.sh", "#!/bin/sh\necho hi\n");
        write(dir.path(), "lib/conf.txt", "x=1\n");
        write(
            dir.path(),
            "lib/base.yaml",
            "provision:\n- file: setup.sh\n- {mode: data, path: /etc/c, file: {url: conf.txt}}\n\
             probes: [{file: setup.sh}]\n",
        );
        let top = write(dir.path(), "top.yaml", "base: lib/base.yaml\n");
        let out = embed_file(&top, &TemplateSearch::default(), None).unwrap();
        let want: Value = serde_yaml::from_str(
            "{provision: [{script: \"#!/bin/sh\\necho hi\\n\"}, \
             {mode: data, path: /etc/c, content: \"x=1\\n\"}], \
             probes: [{script: \"#!/bin/sh\\necho hi\\n\"}]}",
        )
        .unwrap();
        assert_eq!(Value::Mapping(out), want);
    }

    #[test]
    fn default_base_goes_first_and_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "_config/base.yaml",
            "provision: [{script: global}]\n",
        );
        let t = write(
            dir.path(),
            "t.yaml",
            "base: other.yaml\nprovision: [{script: t}]\n",
        );
        write(dir.path(), "other.yaml", "provision: [{script: other}]\n");
        let out = embed_file(&t, &TemplateSearch::default(), Some(&base)).unwrap();
        // Each base is prepended in turn, so the last base ends up first.
        assert_eq!(
            out.get("provision").unwrap(),
            &serde_yaml::from_str::<Value>("[{script: other}, {script: global}, {script: t}]")
                .unwrap()
        );

        let l = write(dir.path(), "loop.yaml", "base: loop.yaml\n");
        let e = embed_file(&l, &TemplateSearch::default(), None).unwrap_err();
        assert!(e.to_string().contains("loop"), "{e}");
        let missing = write(dir.path(), "m.yaml", "base: template:nope\n");
        let e = embed_file(&missing, &TemplateSearch::default(), None).unwrap_err();
        assert!(e.to_string().contains("field `base`"), "{e}");
    }
}
