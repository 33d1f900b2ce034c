//! The block syntax keepalived.conf and conntrackd.conf share: a statement
//! is the words of one line (a `\` at its end continues it on the next); a
//! `{` opens its block (whose statements end at a newline or at the `}`, so
//! `unicast_peer { 10.0.0.2 }` is one line); `#` and `!` start comments
//! anywhere outside quotes; `"..."` quotes a word with spaces;
//! `include <glob>` (keepalived) reads other files in place, relative to
//! the including file; `@id` / `@^id` before a line (keepalived) keeps it
//! for the node of that `config_id` only / for every other ([`select`]).
//! Sans-IO but for [`Source`], which reads the files.
//!
//! Hostile input is bounded: files of at most [`MAX_FILE`] bytes, includes
//! [`MAX_INCLUDE_DEPTH`] deep and [`MAX_FILES`] in all, blocks
//! [`MAX_NESTING`] deep. Every error names the file and line.

use std::path::{Path, PathBuf};

/// Largest file read.
pub const MAX_FILE: usize = 4 << 20;
/// Deepest include.
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// Most files read through includes.
pub const MAX_FILES: usize = 256;
/// Deepest block nesting.
pub const MAX_NESTING: usize = 32;

/// Where a statement came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loc {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One statement: its words, and its block if it opened one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    pub words: Vec<String>,
    /// Which words were quoted (`"..."`), word by word.
    pub quoted: Vec<bool>,
    pub block: Option<Vec<Stmt>>,
    pub loc: Loc,
}

impl Stmt {
    /// The keyword (lower case: conntrackd's are case-insensitive,
    /// keepalived's are lower case).
    pub fn key(&self) -> String {
        self.words
            .first()
            .map(|w| w.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The words after the keyword.
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or(&[])
    }

    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args().get(i).map(String::as_str)
    }

    /// Whether the `i`th word after the keyword was quoted.
    pub fn arg_quoted(&self, i: usize) -> bool {
        self.quoted.get(i + 1).copied().unwrap_or(false)
    }

    /// The statements of its block (none without one).
    pub fn children(&self) -> &[Stmt] {
        self.block.as_deref().unwrap_or(&[])
    }

    /// The statement as written (for "not imported" lists).
    pub fn text(&self) -> String {
        let mut t = self.words.join(" ");
        if self.block.is_some() {
            t.push_str(" { ... }");
        }
        t
    }
}

/// What went wrong reading a file.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: larger than {MAX_FILE} bytes")]
    TooLarge(PathBuf),
    #[error("{0}: not UTF-8 text")]
    NotText(PathBuf),
    #[error("{at}: {problem}")]
    Syntax { at: Loc, problem: String },
}

/// Reads files for the parser (tests give their own).
pub trait Source {
    fn read(&self, path: &Path) -> Result<String, TreeError>;
    /// The files a glob names, sorted (keepalived reads them in order).
    fn glob(&self, pattern: &Path) -> Vec<PathBuf>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy)]
pub struct Fs;

impl Source for Fs {
    fn read(&self, path: &Path) -> Result<String, TreeError> {
        use std::io::Read as _;
        let f = std::fs::File::open(path).map_err(|e| TreeError::Read(path.into(), e))?;
        let mut bytes = Vec::new();
        f.take(MAX_FILE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| TreeError::Read(path.into(), e))?;
        if bytes.len() > MAX_FILE {
            return Err(TreeError::TooLarge(path.into()));
        }
        String::from_utf8(bytes).map_err(|_| TreeError::NotText(path.into()))
    }

    fn glob(&self, pattern: &Path) -> Vec<PathBuf> {
        let Some(p) = pattern.to_str() else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = glob::glob(p)
            .map(|paths| {
                paths
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A word, and whether it was quoted.
    Word(String, bool),
    Open,
    Close,
    Newline,
}

/// Words, braces and line ends of `text`, each with its line number.
fn lex(text: &str, file: &Path) -> Result<Vec<(Tok, usize)>, TreeError> {
    let mut out = Vec::new();
    // Comments go first, line by line (keepalived's `decomment`): `#` or
    // `!` outside quotes ends the line; `\#` and `\!` are the characters.
    // Then a line ending in `\` continues on the next, each joined line
    // numbered by its first.
    let mut joined: Vec<(usize, String)> = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let mut line = String::with_capacity(raw.len());
        let mut in_quote = false;
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('#' | '!')) => {
                    line.extend(chars.next());
                }
                '"' => {
                    in_quote = !in_quote;
                    line.push(c);
                }
                '#' | '!' if !in_quote => break,
                c => line.push(c),
            }
        }
        let (no, mut acc) = open.take().unwrap_or((n + 1, String::new()));
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                acc.push(' ');
                open = Some((no, acc));
            }
            None => {
                acc.push_str(&line);
                joined.push((no, acc));
            }
        }
    }
    joined.extend(open);
    for (line_no, line) in joined {
        let mut chars = line.chars().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut Vec<(Tok, usize)>| {
            if !word.is_empty() {
                out.push((Tok::Word(std::mem::take(word), false), line_no));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '{' => {
                    flush(&mut word, &mut out);
                    out.push((Tok::Open, line_no));
                }
                '}' => {
                    flush(&mut word, &mut out);
                    out.push((Tok::Close, line_no));
                }
                '"' if word.is_empty() => {
                    let mut quoted = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '"' {
                            closed = true;
                            break;
                        }
                        quoted.push(c);
                    }
                    if !closed {
                        return Err(TreeError::Syntax {
                            at: Loc {
                                file: file.into(),
                                line: line_no,
                            },
                            problem: "unterminated quote".into(),
                        });
                    }
                    out.push((Tok::Word(quoted, true), line_no));
                }
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut out);
        out.push((Tok::Newline, line_no));
    }
    Ok(out)
}

/// Parses `path` and what it includes (`include` statements are replaced
/// by the statements of the files they name; `include` is only honoured
/// when `includes` is true).
pub fn parse_file(src: &dyn Source, path: &Path, includes: bool) -> Result<Vec<Stmt>, TreeError> {
    let mut files = 0;
    parse_at(src, path, includes, 0, &mut files)
}

fn parse_at(
    src: &dyn Source,
    path: &Path,
    includes: bool,
    depth: usize,
    files: &mut usize,
) -> Result<Vec<Stmt>, TreeError> {
    *files += 1;
    let text = src.read(path)?;
    let toks = lex(&text, path)?;
    let mut pos = 0;
    let stmts = block(&toks, &mut pos, path, 0, None)?;
    if !includes {
        return Ok(stmts);
    }
    expand(src, stmts, path, depth, files)
}

/// Replaces `include` statements (at any depth) by what they name.
fn expand(
    src: &dyn Source,
    stmts: Vec<Stmt>,
    path: &Path,
    depth: usize,
    files: &mut usize,
) -> Result<Vec<Stmt>, TreeError> {
    let mut out = Vec::new();
    for mut s in stmts {
        if s.key() == "include" && s.block.is_none() {
            let Some(pattern) = s.arg(0) else {
                return Err(TreeError::Syntax {
                    at: s.loc,
                    problem: "include without a file".into(),
                });
            };
            if depth + 1 > MAX_INCLUDE_DEPTH {
                return Err(TreeError::Syntax {
                    at: s.loc,
                    problem: format!("includes nested deeper than {MAX_INCLUDE_DEPTH}"),
                });
            }
            let dir = path.parent().unwrap_or(Path::new("/"));
            let full = dir.join(pattern);
            for f in src.glob(&full) {
                if *files >= MAX_FILES {
                    return Err(TreeError::Syntax {
                        at: s.loc,
                        problem: format!("more than {MAX_FILES} files included"),
                    });
                }
                out.extend(parse_at(src, &f, true, depth + 1, files)?);
            }
            continue;
        }
        if let Some(b) = s.block.take() {
            s.block = Some(expand(src, b, path, depth, files)?);
        }
        out.push(s);
    }
    Ok(out)
}

/// The statements up to the `}` closing the block opened at `opened`
/// (`None`: the file's top level, up to its end).
fn block(
    toks: &[(Tok, usize)],
    pos: &mut usize,
    file: &Path,
    nesting: usize,
    opened: Option<usize>,
) -> Result<Vec<Stmt>, TreeError> {
    let at = |line| Loc {
        file: file.into(),
        line,
    };
    let mut out = Vec::new();
    // The statement being read: its words (and whether each was quoted).
    let mut words: Vec<(String, bool)> = Vec::new();
    let mut first_line = 0;
    let stmt = |words: &mut Vec<(String, bool)>, block, line| {
        let (words, quoted) = std::mem::take(words).into_iter().unzip();
        Stmt {
            words,
            quoted,
            block,
            loc: at(line),
        }
    };
    while let Some((tok, line)) = toks.get(*pos) {
        *pos += 1;
        match tok {
            Tok::Word(w, q) => {
                if words.is_empty() {
                    first_line = *line;
                }
                words.push((w.clone(), *q));
            }
            Tok::Newline => {
                if !words.is_empty() {
                    out.push(stmt(&mut words, None, first_line));
                }
            }
            Tok::Open => {
                if nesting + 1 > MAX_NESTING {
                    return Err(TreeError::Syntax {
                        at: at(*line),
                        problem: format!("blocks nested deeper than {MAX_NESTING}"),
                    });
                }
                if words.is_empty() {
                    return Err(TreeError::Syntax {
                        at: at(*line),
                        problem: "a block without a keyword before its `{`".into(),
                    });
                }
                let children = block(toks, pos, file, nesting + 1, Some(*line))?;
                out.push(stmt(&mut words, Some(children), first_line));
            }
            Tok::Close => {
                if opened.is_none() {
                    return Err(TreeError::Syntax {
                        at: at(*line),
                        problem: "`}` closes no block".into(),
                    });
                }
                if !words.is_empty() {
                    out.push(stmt(&mut words, None, first_line));
                }
                return Ok(out);
            }
        }
    }
    if let Some(line) = opened {
        return Err(TreeError::Syntax {
            at: at(line),
            problem: "block opened here is never closed".into(),
        });
    }
    if !words.is_empty() {
        out.push(stmt(&mut words, None, first_line));
    }
    Ok(out)
}

/// keepalived's conditional lines: a statement whose first word is `@id`
/// is kept (without that word) only when `id` is `config_id`, one with
/// `@^id` only when it is not; those left out are put in `dropped`. At
/// every depth.
pub fn select(stmts: Vec<Stmt>, config_id: &str, dropped: &mut Vec<Stmt>) -> Vec<Stmt> {
    let mut out = Vec::new();
    for mut s in stmts {
        if let Some(cond) = s.words.first().and_then(|w| w.strip_prefix('@')) {
            let keep = match cond.strip_prefix('^') {
                Some(id) => id != config_id,
                None => cond == config_id,
            };
            if !keep || s.words.len() < 2 {
                dropped.push(s);
                continue;
            }
            s.words.remove(0);
            if !s.quoted.is_empty() {
                s.quoted.remove(0);
            }
        }
        if let Some(b) = s.block.take() {
            s.block = Some(select(b, config_id, dropped));
        }
        out.push(s);
    }
    out
}

/// Files held in memory, for tests and the fuzz target.
#[derive(Debug, Default, Clone)]
pub struct MemFiles(pub std::collections::BTreeMap<PathBuf, String>);

impl Source for MemFiles {
    fn read(&self, path: &Path) -> Result<String, TreeError> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| TreeError::Read(path.into(), std::io::ErrorKind::NotFound.into()))
    }

    /// `*` in the last component only.
    fn glob(&self, pattern: &Path) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
            return Vec::new();
        };
        let name = name.to_string_lossy();
        let (pre, post) = name.split_once('*').unwrap_or((&name, ""));
        let exact = !name.contains('*');
        self.0
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter(|p| {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                if exact {
                    n == name
                } else {
                    n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
                }
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> MemFiles {
        MemFiles(
            list.iter()
                .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn blocks_on_one_line_comments_quotes_and_includes() {
        let fs = files(&[
            (
                "/k/keepalived.conf",
                "# top\nglobal_defs { router_id fw1 } ! trailing\ninclude conf.d/*.conf # all\n",
            ),
            (
                "/k/conf.d/a.conf",
                "vrrp_instance VI_1 {\n  unicast_peer { 10.0.0.2 }\n  notify \"/usr/bin/x y\"\n}\n",
            ),
            ("/k/conf.d/b.conf", "vrrp_script chk {\n script true\n}\n"),
        ]);
        let t = parse_file(&fs, Path::new("/k/keepalived.conf"), true).unwrap();
        assert_eq!(t.len(), 3, "{t:#?}");
        assert_eq!(t[0].children()[0].words, ["router_id", "fw1"]);
        let vi = &t[1];
        assert_eq!(
            (vi.key().as_str(), vi.arg(0)),
            ("vrrp_instance", Some("VI_1"))
        );
        assert_eq!(vi.loc.file, PathBuf::from("/k/conf.d/a.conf"));
        assert_eq!(vi.children()[0].children()[0].words, ["10.0.0.2"]);
        assert_eq!(vi.children()[1].words, ["notify", "/usr/bin/x y"]);
        assert_eq!(vi.children()[1].loc.line, 3);
        assert_eq!(t[2].key(), "vrrp_script");
    }

    #[test]
    fn continued_lines_and_conditional_ones() {
        let fs = files(&[(
            "/k",
            "vrrp_instance A {\n  priority \\\n 150\n  @fw1 priority 200\n  @^fw1 priority 50 # x\n  @fw2 {\n}\n}\n",
        )]);
        let t = parse_file(&fs, Path::new("/k"), true).unwrap();
        assert_eq!(t[0].children()[0].words, ["priority", "150"]);
        // A comment ending in `\` continues nothing; `\#` is a `#`.
        let fs = files(&[("/c", "# old \\\na \\#b \"x # y\" # z\n")]);
        let c = parse_file(&fs, Path::new("/c"), true).unwrap();
        assert_eq!(c[0].words, ["a", "#b", "x # y"]);
        assert_eq!(c[0].quoted, [false, false, true]);
        assert_eq!(c[0].loc.line, 2);
        assert_eq!(t[0].children()[0].loc.line, 2);
        let mut dropped = Vec::new();
        let on_fw1 = select(t.clone(), "fw1", &mut dropped);
        let words: Vec<_> = on_fw1[0]
            .children()
            .iter()
            .map(|c| c.words.join(" "))
            .collect();
        assert_eq!(words, ["priority 150", "priority 200"]);
        assert_eq!(dropped.len(), 2);
        let mut dropped = Vec::new();
        let on_fw2 = select(t, "fw2", &mut dropped);
        let words: Vec<_> = on_fw2[0]
            .children()
            .iter()
            .map(|c| c.words.join(" "))
            .collect();
        assert_eq!(words, ["priority 150", "priority 50"]);
        assert_eq!(dropped.len(), 2, "{dropped:?}");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, want) in [
            ("a {\n b\n", "/f:1: block opened here is never closed"),
            ("a\n}\n", "/f:2: `}` closes no block"),
            ("{ x }\n", "/f:1: a block without a keyword"),
            ("a \"b\n", "/f:1: unterminated quote"),
        ] {
            let fs = files(&[("/f", text)]);
            let e = parse_file(&fs, Path::new("/f"), true)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        let deep = "a {".repeat(MAX_NESTING + 1);
        let fs = files(&[("/f", &deep)]);
        assert!(parse_file(&fs, Path::new("/f"), true).is_err());
        // An include of itself stops at the depth limit.
        let fs = files(&[("/f", "include f\n")]);
        let e = parse_file(&fs, Path::new("/f"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nested deeper"), "{e}");
    }
}
