//! Generates the exports of every driver function the shim does not implement (each returns
//! CUDA_ERROR_NOT_SUPPORTED and names itself once on stderr), the lists of implemented and
//! unsupported functions, and the compatibility table (`COMPAT`: every exported driver function
//! with its status). What counts as implemented, and whether an implemented function forwards a
//! call to the server or is answered in the shim, is read from the code itself (see [`compat`]),
//! so none of it can drift from the code.

use std::fs;
use std::path::Path;

mod compat {
    //! The one place that decides each driver function's status, from the shim's sources:
    //!
    //! - **implemented**: a function definition named after a driver symbol (the `fn cuName |
    //!   cuAlias … (` heads of `export!` blocks), or an `Auto` entry of the protocol's table;
    //! - **forwarded**: an `Auto` entry (its export sends the call), or a hand-written export whose
    //!   body reaches a call on the lane: a method call of the client's lane primitives (the
    //!   methods of `client.rs` that use `self.lane`: `send`, `call`, `submit`), directly or
    //!   through any function of the shim it calls (`htod`, `load_module`, `launch`,
    //!   `kernel_function`, another export, `auto::…`), followed to a fixpoint. An alias shares
    //!   its function's status;
    //! - **local**: implemented, and reaching no lane call (versions, error strings, the context
    //!   stack, the handshake's device data, `cuGetProcAddress`, export tables, the linker, …);
    //! - **not supported**: every other driver symbol (a generated stub).
    //!
    //! The connection modules (`client`, `lane`, `transport`) are not followed: reaching the
    //! client (`client::get`) is not a call, and their channels' `send` is not the lane's.

    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::fs;
    use std::path::{Path, PathBuf};

    pub const FORWARDED: &str = "forwarded";
    pub const LOCAL: &str = "local";
    pub const NOT_SUPPORTED: &str = "not supported";

    /// The connection itself: its functions are not followed (see the module docs).
    const CONNECTION: &[&str] = &["client.rs", "lane.rs", "transport.rs"];

    /// Helpers that answer from what the handshake brought and ask the server only for what it
    /// lacked (a device attribute newer than the server's list): exports that reach the lane
    /// only through them count as local. Each must exist and call the lane itself, or the build
    /// fails (so the list cannot go stale).
    const ANSWERED_FROM_WELCOME: &[(&str, &str)] = &[("manual/device.rs", "attribute")];

    /// One function definition (or `export!` head) of the shim.
    struct Func {
        /// Path under src/, with `/` separators.
        file: String,
        /// Its name and its aliases (`fn cuName | cuAlias (`).
        names: Vec<String>,
        /// Whether its body calls a lane primitive itself.
        direct: bool,
        /// The functions its body calls: (qualifier before `::`, name).
        calls: Vec<(Option<String>, String)>,
    }

    pub struct Analysis {
        /// Driver symbols the shim implements.
        pub implemented: BTreeSet<String>,
        /// Every driver symbol and its status, by name.
        pub status: BTreeMap<String, &'static str>,
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    fn is_ident(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_'
    }

    /// The source with comments blanked and string and character literals emptied, so braces,
    /// parentheses and words inside them are not seen.
    fn strip(text: &str) -> Vec<char> {
        let s: Vec<char> = text.chars().collect();
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            let c = s[i];
            let next = s.get(i + 1).copied();
            let prev_ident = i > 0 && is_ident(s[i - 1]);
            if c == '/' && next == Some('/') {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            } else if c == '/' && next == Some('*') {
                let mut depth = 0;
                while i < s.len() {
                    if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            } else if c == 'r'
                && (!prev_ident || (i == 1 || !is_ident(s[i - 2])) && s[i - 1] == 'b')
                && matches!(next, Some('"') | Some('#'))
            {
                // A raw string: r"…", r#"…"#, br"…".
                let mut j = i + 1;
                let mut hashes = 0;
                while s.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if s.get(j) != Some(&'"') {
                    out.push(c);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= s.len() {
                        break;
                    }
                    if s[j] == '"' && (0..hashes).all(|k| s.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.extend(['"', '"']);
                i = j;
            } else if c == '"' {
                i += 1;
                while i < s.len() && s[i] != '"' {
                    i += if s[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.extend(['"', '"']);
            } else if c == '\'' && next == Some('\\') {
                // An escaped character literal: '\n', '\'', '\u{…}'.
                i += 2;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.extend(['\'', '\'']);
            } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
                i += 3;
                out.extend(['\'', '\'']);
            } else {
                // Anything else, a lifetime's quote included.
                out.push(c);
                i += 1;
            }
        }
        out
    }

    fn skip_ws(s: &[char], mut i: usize) -> usize {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        i
    }

    fn ident_at(s: &[char], i: usize) -> Option<(String, usize)> {
        if i < s.len() && (s[i].is_ascii_alphabetic() || s[i] == '_') {
            let mut j = i;
            while j < s.len() && is_ident(s[j]) {
                j += 1;
            }
            Some((s[i..j].iter().collect(), j))
        } else {
            None
        }
    }

    /// Every function definition of a (stripped) file: its names and its body's text.
    fn functions(s: &[char]) -> Vec<(Vec<String>, Vec<char>)> {
        let mut out = vec![];
        let mut i = 0;
        while i + 2 <= s.len() {
            let word = s[i] == 'f' && s[i + 1] == 'n' && (i == 0 || !is_ident(s[i - 1])) && s.get(i + 2).is_none_or(|c| !is_ident(*c));
            if !word {
                i += 1;
                continue;
            }
            i += 2;
            let Some((name, mut j)) = ident_at(s, skip_ws(s, i)) else { continue };
            let mut names = vec![name];
            loop {
                j = skip_ws(s, j);
                if s.get(j) != Some(&'|') {
                    break;
                }
                let Some((alias, k)) = ident_at(s, skip_ws(s, j + 1)) else { break };
                names.push(alias);
                j = k;
            }
            // The body: the first `{` outside the signature's parentheses and brackets.
            let mut depth = 0i32;
            let mut start = None;
            while j < s.len() {
                match s[j] {
                    '(' | '[' => depth += 1,
                    ')' | ']' => depth -= 1,
                    ';' if depth == 0 => break,
                    '{' if depth == 0 => {
                        start = Some(j);
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            let Some(start) = start else { continue };
            let mut depth = 0;
            let mut end = start;
            while end < s.len() {
                match s[end] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                end += 1;
            }
            out.push((names, s[start..end.min(s.len())].to_vec()));
            // Nested functions are found too: carry on inside the body.
            i = start;
        }
        out
    }

    /// The calls of a body: `name(` and `path::name(` (free functions, associated functions),
    /// and whether it calls one of `primitives` as a method (`c.send(`, `client.call(`, …).
    fn calls(body: &[char], primitives: &BTreeSet<String>) -> (bool, Vec<(Option<String>, String)>) {
        let mut direct = false;
        let mut out = vec![];
        let mut i = 0;
        while i < body.len() {
            if !(body[i].is_ascii_alphabetic() || body[i] == '_') || (i > 0 && is_ident(body[i - 1])) {
                i += 1;
                continue;
            }
            let (name, j) = ident_at(body, i).unwrap();
            let open = skip_ws(body, j);
            if body.get(open) == Some(&'(') {
                let mut p = i;
                while p > 0 && body[p - 1].is_whitespace() {
                    p -= 1;
                }
                if p > 0 && body[p - 1] == '.' {
                    direct |= primitives.contains(&name);
                } else if p > 1 && body[p - 1] == ':' && body[p - 2] == ':' {
                    let mut q = p - 2;
                    while q > 0 && body[q - 1].is_whitespace() {
                        q -= 1;
                    }
                    let mut b = q;
                    while b > 0 && is_ident(body[b - 1]) {
                        b -= 1;
                    }
                    out.push((Some(body[b..q].iter().collect()), name));
                } else {
                    out.push((None, name));
                }
            }
            i = j;
        }
        (direct, out)
    }

    /// The module a file is, as a path qualifier names it (`manual/memory.rs` is `memory`,
    /// `export_tables/mod.rs` is `export_tables`).
    fn module_of(file: &str) -> &str {
        let mut parts = file.rsplit('/');
        let last = parts.next().unwrap_or("");
        if last == "mod.rs" {
            parts.next().unwrap_or("")
        } else {
            last.strip_suffix(".rs").unwrap_or(last)
        }
    }

    /// The `Auto` entries of the protocol's table (their exports are generated in auto.rs).
    fn auto_entries(api: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for line in api.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 3 && f[0].starts_with("cu") && ["Async", "Sync", "Barrier"].contains(&f[1]) && f[2] == "Auto" {
                out.insert(f[0].to_owned());
            }
        }
        out
    }

    pub fn analyse(src: &Path, api: &str, symbols: &[String]) -> Analysis {
        let known: BTreeSet<&str> = symbols.iter().map(String::as_str).collect();
        let auto = auto_entries(api);

        let mut files = vec![];
        rust_files(src, &mut files);
        files.sort();
        let sources: Vec<(String, Vec<char>)> = files
            .iter()
            .map(|f| {
                let rel = f.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
                (rel, strip(&fs::read_to_string(f).unwrap()))
            })
            .collect();

        // The lane primitives: the client's methods that use the lane.
        let client = &sources.iter().find(|(f, _)| f == "client.rs").expect("src/client.rs").1;
        let primitives: BTreeSet<String> = functions(client)
            .into_iter()
            .filter(|(_, body)| body.iter().collect::<String>().contains("self.lane."))
            .map(|(n, _)| n[0].clone())
            .collect();
        assert!(!primitives.is_empty(), "compat: no lane primitives found in src/client.rs");

        let mut implemented: BTreeSet<String> = auto.iter().filter(|n| known.contains(n.as_str())).cloned().collect();
        let mut funcs: Vec<Func> = vec![];
        for (file, text) in &sources {
            for (names, body) in functions(text) {
                implemented.extend(names.iter().filter(|n| known.contains(n.as_str())).cloned());
                if CONNECTION.contains(&file.as_str()) {
                    continue;
                }
                let (direct, calls) = calls(&body, &primitives);
                funcs.push(Func { file: file.clone(), names, direct, calls });
            }
        }
        // The generated exports of the Auto entries send their call.
        for name in &auto {
            funcs.push(Func { file: "auto.rs".into(), names: vec![name.clone()], direct: true, calls: vec![] });
        }

        // Helpers answered from the welcome: checked, then taken as local.
        for (file, name) in ANSWERED_FROM_WELCOME {
            let f = funcs.iter_mut().find(|f| f.file == *file && f.names[0] == *name);
            let f = f.unwrap_or_else(|| panic!("compat: {file}: no fn {name} (update ANSWERED_FROM_WELCOME in build.rs)"));
            assert!(f.direct, "compat: {file}: fn {name} no longer calls the lane (update ANSWERED_FROM_WELCOME in build.rs)");
            f.direct = false;
            f.calls.clear();
        }

        // Resolve the calls: a qualified call to the functions of that module, a bare one to the
        // same file's functions if it has one of that name, else to every function of that name.
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, f) in funcs.iter().enumerate() {
            for n in &f.names {
                by_name.entry(n.as_str()).or_default().push(i);
            }
        }
        let edges: Vec<Vec<usize>> = funcs
            .iter()
            .map(|f| {
                let mut out = vec![];
                for (qual, name) in &f.calls {
                    let Some(all) = by_name.get(name.as_str()) else { continue };
                    let narrowed: Vec<usize> = match qual {
                        Some(q) => all.iter().copied().filter(|&i| module_of(&funcs[i].file) == q).collect(),
                        None => all.iter().copied().filter(|&i| funcs[i].file == f.file).collect(),
                    };
                    out.extend(if narrowed.is_empty() { all.clone() } else { narrowed });
                }
                out
            })
            .collect();

        // Forwarding, to a fixpoint.
        let mut forwards: Vec<bool> = funcs.iter().map(|f| f.direct).collect();
        loop {
            let mut changed = false;
            for i in 0..funcs.len() {
                if !forwards[i] && edges[i].iter().any(|&j| forwards[j]) {
                    forwards[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }

        let status = symbols
            .iter()
            .map(|s| {
                let st = if !implemented.contains(s) {
                    NOT_SUPPORTED
                } else if by_name.get(s.as_str()).is_some_and(|fs| fs.iter().any(|&i| forwards[i])) {
                    FORWARDED
                } else {
                    LOCAL
                };
                (s.clone(), st)
            })
            .collect();
        Analysis { implemented, status }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=../protocol/src/api.rs");
    // The shim is loaded as libcuda.so.1: with that SONAME, a preloaded shim also answers a
    // program's later dlopen("libcuda.so.1").
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");

    let symbols: Vec<String> = fs::read_to_string("src/generated/driver_symbols.txt")
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    let api = fs::read_to_string("../protocol/src/api.rs").unwrap();
    let analysis = compat::analyse(Path::new("src"), &api, &symbols);
    let implemented = &analysis.implemented;
    let out_dir = std::env::var("OUT_DIR").unwrap();

    let mut out = String::from("// @generated by client-shim/build.rs\n");
    out.push_str("/// Driver functions the shim implements (forwarded or answered locally).\n");
    out.push_str("pub const IMPLEMENTED: &[&str] = &[\n");
    for n in implemented {
        out.push_str(&format!("    \"{n}\",\n"));
    }
    out.push_str("];\n/// Driver functions exported as stubs returning CUDA_ERROR_NOT_SUPPORTED.\n");
    out.push_str("pub const NOT_SUPPORTED: &[&str] = &[\n");
    let stubs: Vec<&String> = symbols.iter().filter(|s| !implemented.contains(*s)).collect();
    for n in &stubs {
        out.push_str(&format!("    \"{n}\",\n"));
    }
    out.push_str("];\n\n");
    for n in &stubs {
        out.push_str(&format!("#[no_mangle]\npub unsafe extern \"C\" fn {n}() -> u32 {{\n    crate::not_supported(\"{n}\")\n}}\n"));
    }
    fs::write(Path::new(&out_dir).join("stubs.rs"), out).unwrap();

    let mut out = String::from("// @generated by client-shim/build.rs (module `compat`)\n");
    out.push_str("/// Every exported driver function, sorted by name, with its status: `\"forwarded\"` (sends a\n");
    out.push_str("/// call to the server), `\"local\"` (answered in the shim) or `\"not supported\"` (a stub).\n");
    out.push_str("pub const COMPAT: &[(&str, &str)] = &[\n");
    for (name, status) in &analysis.status {
        out.push_str(&format!("    (\"{name}\", \"{status}\"),\n"));
    }
    out.push_str("];\n");
    fs::write(Path::new(&out_dir).join("compat.rs"), out).unwrap();
}
