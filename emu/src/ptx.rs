//! Lexer and parser for PTX text: turns a module into declarations and raw instruction
//! statements. Meaning (registers, symbols, types) is resolved later, in `decode`.

use crate::error::EmuError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// Identifiers, directives (`.reg`), opcodes with modifiers (`ld.global.f32`),
    /// registers (`%r1`, `%tid.x`) and labels.
    Id(String),
    Int(u64),
    /// A float literal, already as the f64 value (`0f..` literals become `F32Bits`).
    Float(f64),
    F32Bits(u32),
    F64Bits(u64),
    Str(String),
    P(char),
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub line: u32,
}

fn is_id_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}
fn is_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

pub fn lex(src: &str) -> Result<Vec<Token>, EmuError> {
    let b = src.as_bytes();
    let mut i = 0usize;
    let mut line = 1u32;
    let mut out = Vec::with_capacity(src.len() / 4);
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() || c == 0 {
            i += 1;
            continue;
        }
        if c == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            let s = String::from_utf8_lossy(&b[start..i.min(b.len())]).into_owned();
            out.push(Token { tok: Tok::Str(s), line });
            i += 1;
            continue;
        }
        if is_id_start(c) {
            let start = i;
            loop {
                if i < b.len() && is_id_char(b[i]) {
                    i += 1;
                } else if i + 2 < b.len() && b[i] == b':' && b[i + 1] == b':' && is_id_char(b[i + 2]) {
                    // cache-policy modifiers such as `.L1::no_allocate`
                    i += 2;
                } else {
                    break;
                }
            }
            out.push(Token { tok: Tok::Id(src[start..i].to_string()), line });
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            if c == b'0' && i + 1 < b.len() && matches!(b[i + 1], b'f' | b'F' | b'd' | b'D' | b'x' | b'X') {
                let kind = b[i + 1].to_ascii_lowercase();
                i += 2;
                let hs = i;
                while i < b.len() && b[i].is_ascii_hexdigit() {
                    i += 1;
                }
                let hex = &src[hs..i];
                let bad = || EmuError::InvalidPtx(format!("line {line}: bad number {}", &src[start..i]));
                let v = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
                if i < b.len() && b[i] == b'U' {
                    i += 1;
                }
                out.push(Token {
                    tok: match kind {
                        b'f' => Tok::F32Bits(v as u32),
                        b'd' => Tok::F64Bits(v),
                        _ => Tok::Int(v),
                    },
                    line,
                });
                continue;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let mut is_float = false;
            if i < b.len() && b[i] == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
                is_float = true;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                is_float = true;
                i += 1;
                if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let text = &src[start..i];
            let bad = || EmuError::InvalidPtx(format!("line {line}: bad number {text}"));
            let tok = if is_float {
                Tok::Float(text.parse().map_err(|_| bad())?)
            } else if text.len() > 1 && text.starts_with('0') && text.bytes().all(|d| (b'0'..=b'7').contains(&d)) {
                Tok::Int(u64::from_str_radix(&text[1..], 8).map_err(|_| bad())?)
            } else {
                Tok::Int(text.parse().map_err(|_| bad())?)
            };
            if i < b.len() && b[i] == b'U' {
                i += 1;
            }
            out.push(Token { tok, line });
            continue;
        }
        out.push(Token { tok: Tok::P(c as char), line });
        i += 1;
    }
    Ok(out)
}

/// A state space of a declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclSpace {
    Global,
    Const,
    Shared,
    Local,
    Param,
}

/// One element of an initialiser.
#[derive(Debug, Clone)]
pub enum InitVal {
    Int(u64),
    Float(f64),
    F32Bits(u32),
    F64Bits(u64),
    /// Address of a symbol (plus offset); `generic(sym)` too.
    Sym(String, i64),
}

#[derive(Debug, Clone)]
pub struct VarDecl {
    pub space: DeclSpace,
    pub align: u32,
    /// Scalar type name without the dot, e.g. "b8", "u32", "f32".
    pub ty: String,
    pub name: String,
    /// Product of all array dimensions; `None` for a scalar, `Some(0)` for `[]`.
    pub elems: Option<u64>,
    pub init: Vec<InitVal>,
    pub is_extern: bool,
    pub line: u32,
}

impl VarDecl {
    pub fn elem_size(&self) -> u64 {
        type_size(&self.ty).unwrap_or(1) as u64
    }
    pub fn size(&self) -> u64 {
        self.elem_size().saturating_mul(self.elems.unwrap_or(1))
    }
}

/// Size in bytes of a PTX fundamental type name (without the dot).
pub fn type_size(t: &str) -> Option<u32> {
    Some(match t {
        "b8" | "u8" | "s8" => 1,
        "b16" | "u16" | "s16" | "f16" | "bf16" => 2,
        "b32" | "u32" | "s32" | "f32" | "f16x2" | "bf16x2" => 4,
        "b64" | "u64" | "s64" | "f64" => 8,
        "b128" => 16,
        "pred" => 1,
        _ => return None,
    })
}

#[derive(Debug, Clone)]
pub struct ParamDecl {
    pub ty: String,
    pub align: u32,
    pub name: String,
    pub elems: Option<u64>,
}

impl ParamDecl {
    pub fn size(&self) -> u32 {
        (type_size(&self.ty).unwrap_or(1) as u64).saturating_mul(self.elems.unwrap_or(1)).min(u32::MAX as u64) as u32
    }
}

#[derive(Debug, Clone)]
pub enum Operand {
    Name(String),
    Int(i64),
    Float(f64),
    F32Bits(u32),
    F64Bits(u64),
    /// `!%p`
    Not(String),
    /// `[base + off]`; base is a name or absent (absolute address).
    Mem(Option<String>, i64),
    /// `{a, b, ...}`
    Vec(Vec<Operand>),
    /// `(a, b)` in a call
    List(Vec<Operand>),
    /// `%p|%q`
    Pair(String, String),
    /// `sym+off` as a plain operand
    SymOff(String, i64),
}

#[derive(Debug, Clone)]
pub struct RawInst {
    pub guard: Option<(String, bool)>,
    pub opcode: String,
    pub operands: Vec<Operand>,
    pub line: u32,
}

#[derive(Debug, Clone)]
pub enum Stmt {
    Reg { ty: String, names: Vec<String> },
    Var(VarDecl),
    Label(String),
    Inst(RawInst),
    Open,
    Close,
}

#[derive(Debug, Clone)]
pub struct FuncDecl {
    pub is_entry: bool,
    pub name: String,
    pub rets: Vec<ParamDecl>,
    pub params: Vec<ParamDecl>,
    pub body: Option<Vec<Stmt>>,
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
    pub line: u32,
}

#[derive(Debug, Clone, Default)]
pub struct PtxModule {
    pub version: (u32, u32),
    pub target: String,
    pub vars: Vec<VarDecl>,
    pub funcs: Vec<FuncDecl>,
}

struct Parser {
    t: Vec<Token>,
    i: usize,
}

fn err(line: u32, msg: impl std::fmt::Display) -> EmuError {
    EmuError::InvalidPtx(format!("line {line}: {msg}"))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i).map(|t| &t.tok)
    }
    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.t.get(self.i + k).map(|t| &t.tok)
    }
    fn line(&self) -> u32 {
        self.t.get(self.i).or(self.t.last()).map(|t| t.line).unwrap_or(0)
    }
    fn next(&mut self) -> Result<Tok, EmuError> {
        let t = self.t.get(self.i).ok_or_else(|| err(self.line(), "unexpected end of PTX"))?;
        self.i += 1;
        Ok(t.tok.clone())
    }
    fn is_p(&self, c: char) -> bool {
        self.peek() == Some(&Tok::P(c))
    }
    fn is_id(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Id(x)) if x == s)
    }
    fn expect_p(&mut self, c: char) -> Result<(), EmuError> {
        let l = self.line();
        match self.next()? {
            Tok::P(x) if x == c => Ok(()),
            t => Err(err(l, format!("expected '{c}', found {t:?}"))),
        }
    }
    fn id(&mut self) -> Result<String, EmuError> {
        let l = self.line();
        match self.next()? {
            Tok::Id(s) => Ok(s),
            t => Err(err(l, format!("expected a name, found {t:?}"))),
        }
    }
    fn int(&mut self) -> Result<u64, EmuError> {
        let l = self.line();
        match self.next()? {
            Tok::Int(v) => Ok(v),
            t => Err(err(l, format!("expected an integer, found {t:?}"))),
        }
    }
    fn skip_line(&mut self) {
        let l = self.line();
        while self.i < self.t.len() && self.t[self.i].line == l {
            self.i += 1;
        }
    }
    fn skip_to_semi(&mut self) -> Result<(), EmuError> {
        while !self.is_p(';') {
            self.next()?;
        }
        self.i += 1;
        Ok(())
    }
    fn skip_braces(&mut self) -> Result<(), EmuError> {
        self.expect_p('{')?;
        let mut depth = 1;
        while depth > 0 {
            match self.next()? {
                Tok::P('{') => depth += 1,
                Tok::P('}') => depth -= 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// `[N]` dimensions after a name.
    fn dims(&mut self) -> Result<Option<u64>, EmuError> {
        let mut elems: Option<u64> = None;
        while self.is_p('[') {
            self.i += 1;
            let n = if self.is_p(']') { 0 } else { self.int()? };
            self.expect_p(']')?;
            elems = Some(elems.unwrap_or(1).saturating_mul(n));
        }
        Ok(elems)
    }

    fn module(&mut self) -> Result<PtxModule, EmuError> {
        let mut m = PtxModule::default();
        while self.i < self.t.len() {
            let l = self.line();
            let tok = self.next()?;
            let Tok::Id(d) = tok else {
                if tok == Tok::P(';') {
                    continue;
                }
                return Err(err(l, format!("unexpected {tok:?} at module scope")));
            };
            match d.as_str() {
                ".version" => {
                    let t = self.next()?;
                    m.version = match t {
                        Tok::Float(f) => {
                            let s = format!("{f}");
                            let mut it = s.split('.');
                            let a = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                            let b = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                            (a, b)
                        }
                        Tok::Int(a) => (a as u32, 0),
                        _ => return Err(err(l, ".version needs a number")),
                    };
                }
                ".target" => {
                    let mut ts = vec![self.id()?];
                    while self.is_p(',') {
                        self.i += 1;
                        ts.push(self.id()?);
                    }
                    m.target = ts.join(",");
                }
                ".address_size" => {
                    let a = self.int()?;
                    if a != 64 {
                        return Err(EmuError::Unsupported(format!("line {l}: .address_size {a} (only 64-bit PTX is supported)")));
                    }
                }
                ".file" | ".loc" => {
                    self.i -= 1;
                    self.skip_line();
                }
                ".section" => {
                    self.id()?;
                    self.skip_braces()?;
                }
                ".pragma" => self.skip_to_semi()?,
                ".visible" | ".extern" | ".weak" | ".common" => {
                    let ext = d == ".extern";
                    self.decl(&mut m, ext)?;
                }
                _ => {
                    self.i -= 1;
                    self.decl(&mut m, false)?;
                }
            }
        }
        Ok(m)
    }

    fn decl(&mut self, m: &mut PtxModule, is_extern: bool) -> Result<(), EmuError> {
        let l = self.line();
        let d = self.id()?;
        match d.as_str() {
            ".visible" | ".extern" | ".weak" | ".common" => self.decl(m, is_extern || d == ".extern"),
            ".entry" | ".func" => {
                let f = self.func(d == ".entry", l)?;
                m.funcs.push(f);
                Ok(())
            }
            ".global" | ".const" | ".shared" => {
                let space = match d.as_str() {
                    ".global" => DeclSpace::Global,
                    ".const" => DeclSpace::Const,
                    _ => DeclSpace::Shared,
                };
                let vs = self.var(space, is_extern, l)?;
                m.vars.extend(vs);
                Ok(())
            }
            _ => Err(err(l, format!("unsupported directive {d}"))),
        }
    }

    /// After the space directive: `[.align N] [.v2] .type name[dims] [= init] {, name...};`
    fn var(&mut self, space: DeclSpace, is_extern: bool, line: u32) -> Result<Vec<VarDecl>, EmuError> {
        let mut align = 0u32;
        let ty;
        let mut vecn = 1u64;
        loop {
            let l = self.line();
            let x = self.id()?;
            match x.as_str() {
                ".align" => align = self.int()? as u32,
                ".v2" => vecn = 2,
                ".v4" => vecn = 4,
                ".v8" => vecn = 8,
                ".ptr" | ".attribute" => {}
                _ if x.starts_with('.') => {
                    let t = &x[1..];
                    if type_size(t).is_none() {
                        return Err(err(l, format!("unsupported variable type or attribute {x}")));
                    }
                    ty = t.to_string();
                    break;
                }
                _ => return Err(err(l, format!("expected a type, found {x}"))),
            }
        }
        let mut out = Vec::new();
        loop {
            let name = self.id()?;
            let mut elems = self.dims()?;
            if vecn > 1 {
                elems = Some(elems.unwrap_or(1).saturating_mul(vecn));
            }
            let mut init = Vec::new();
            if self.is_p('=') {
                self.i += 1;
                self.init(&mut init)?;
            }
            let ts = type_size(&ty).unwrap_or(1);
            out.push(VarDecl { space, align: if align == 0 { ts } else { align }, ty: ty.clone(), name, elems, init, is_extern, line });
            if self.is_p(',') {
                self.i += 1;
                continue;
            }
            self.expect_p(';')?;
            return Ok(out);
        }
    }

    fn init(&mut self, out: &mut Vec<InitVal>) -> Result<(), EmuError> {
        let l = self.line();
        if self.is_p('{') {
            self.i += 1;
            loop {
                if self.is_p('}') {
                    self.i += 1;
                    break;
                }
                self.init(out)?;
                if self.is_p(',') {
                    self.i += 1;
                }
            }
            return Ok(());
        }
        let mut neg = false;
        if self.is_p('-') {
            self.i += 1;
            neg = true;
        }
        match self.next()? {
            Tok::Int(v) => out.push(InitVal::Int(if neg { v.wrapping_neg() } else { v })),
            Tok::Float(f) => out.push(InitVal::Float(if neg { -f } else { f })),
            Tok::F32Bits(b) => out.push(InitVal::F32Bits(b)),
            Tok::F64Bits(b) => out.push(InitVal::F64Bits(b)),
            Tok::Id(s) if s == "generic" => {
                self.expect_p('(')?;
                let n = self.id()?;
                self.expect_p(')')?;
                let off = self.sym_off()?;
                out.push(InitVal::Sym(n, off));
            }
            Tok::Id(s) => {
                let off = self.sym_off()?;
                out.push(InitVal::Sym(s, off));
            }
            t => return Err(err(l, format!("bad initialiser {t:?}"))),
        }
        Ok(())
    }

    fn sym_off(&mut self) -> Result<i64, EmuError> {
        if self.is_p('+') {
            self.i += 1;
            let neg = if self.is_p('-') {
                self.i += 1;
                true
            } else {
                false
            };
            let v = self.int()? as i64;
            return Ok(if neg { -v } else { v });
        }
        if self.is_p('-') {
            self.i += 1;
            return Ok(-(self.int()? as i64));
        }
        Ok(0)
    }

    fn param(&mut self) -> Result<ParamDecl, EmuError> {
        let l = self.line();
        let d = self.id()?;
        if d != ".param" && d != ".reg" {
            return Err(err(l, format!("expected .param, found {d}")));
        }
        let mut ty = String::new();
        let mut align = 0;
        let mut after_ptr = false;
        loop {
            let l = self.line();
            let x = self.id()?;
            if !x.starts_with('.') {
                let elems = self.dims()?;
                let ts = type_size(&ty).unwrap_or(1);
                return Ok(ParamDecl { align: if align == 0 { ts } else { align }, ty, name: x, elems });
            }
            match x.as_str() {
                ".align" => {
                    let a = self.int()? as u32;
                    if !after_ptr {
                        align = a;
                    }
                }
                ".ptr" => after_ptr = true,
                ".global" | ".shared" | ".const" | ".local" => {}
                _ => {
                    if type_size(&x[1..]).is_some() && ty.is_empty() {
                        ty = x[1..].to_string();
                    } else if x.starts_with(".ptr") {
                        after_ptr = true;
                    } else {
                        return Err(err(l, format!("unsupported parameter attribute {x}")));
                    }
                }
            }
        }
    }

    fn param_list(&mut self) -> Result<Vec<ParamDecl>, EmuError> {
        self.expect_p('(')?;
        let mut v = Vec::new();
        while !self.is_p(')') {
            v.push(self.param()?);
            if self.is_p(',') {
                self.i += 1;
            }
        }
        self.i += 1;
        Ok(v)
    }

    fn dim3(&mut self) -> Result<[u32; 3], EmuError> {
        let mut d = [1u32; 3];
        d[0] = self.int()? as u32;
        for dk in d.iter_mut().skip(1) {
            if self.is_p(',') {
                self.i += 1;
                *dk = self.int()? as u32;
            }
        }
        Ok(d)
    }

    fn func(&mut self, is_entry: bool, line: u32) -> Result<FuncDecl, EmuError> {
        let mut rets = Vec::new();
        if self.is_p('(') {
            rets = self.param_list()?;
        }
        let name = self.id()?;
        let params = if self.is_p('(') { self.param_list()? } else { Vec::new() };
        let mut f = FuncDecl { is_entry, name, rets, params, body: None, maxntid: None, reqntid: None, line };
        loop {
            let l = self.line();
            match self.next()? {
                Tok::P(';') => return Ok(f),
                Tok::P('{') => break,
                Tok::Id(d) => match d.as_str() {
                    ".maxntid" => f.maxntid = Some(self.dim3()?),
                    ".reqntid" => f.reqntid = Some(self.dim3()?),
                    ".minnctapersm" | ".maxnctapersm" | ".maxnreg" | ".maxclusterrank" => {
                        self.int()?;
                    }
                    ".reqnctapercluster" | ".explicitcluster" => {
                        let _ = self.dim3();
                    }
                    ".noreturn" => {}
                    ".pragma" => self.skip_to_semi()?,
                    _ => return Err(err(l, format!("unsupported function directive {d}"))),
                },
                t => return Err(err(l, format!("unexpected {t:?} in function header"))),
            }
        }
        let mut body = Vec::new();
        let mut depth = 1;
        while depth > 0 {
            let l = self.line();
            match self.peek().cloned() {
                None => return Err(err(l, "unterminated function body")),
                Some(Tok::P('{')) => {
                    self.i += 1;
                    depth += 1;
                    body.push(Stmt::Open);
                }
                Some(Tok::P('}')) => {
                    self.i += 1;
                    depth -= 1;
                    if depth > 0 {
                        body.push(Stmt::Close);
                    }
                }
                Some(Tok::P(';')) => self.i += 1,
                Some(Tok::P('@')) => body.push(Stmt::Inst(self.inst()?)),
                Some(Tok::Id(s)) => {
                    if self.peek_at(1) == Some(&Tok::P(':')) {
                        self.i += 2;
                        if self.is_id(".callprototype") {
                            self.skip_to_semi()?;
                        } else {
                            body.push(Stmt::Label(s));
                        }
                        continue;
                    }
                    match s.as_str() {
                        ".reg" => {
                            self.i += 1;
                            body.push(self.reg_decl()?);
                        }
                        ".local" | ".shared" | ".param" | ".global" | ".const" => {
                            self.i += 1;
                            let sp = match s.as_str() {
                                ".local" => DeclSpace::Local,
                                ".shared" => DeclSpace::Shared,
                                ".param" => DeclSpace::Param,
                                ".global" => DeclSpace::Global,
                                _ => DeclSpace::Const,
                            };
                            for v in self.var(sp, false, l)? {
                                body.push(Stmt::Var(v));
                            }
                        }
                        ".extern" => {
                            self.i += 1;
                            let sp = self.id()?;
                            if sp != ".shared" {
                                return Err(err(l, format!("unsupported .extern {sp} in a function")));
                            }
                            for v in self.var(DeclSpace::Shared, true, l)? {
                                body.push(Stmt::Var(v));
                            }
                        }
                        ".loc" | ".file" => self.skip_line(),
                        ".pragma" => self.skip_to_semi()?,
                        _ if s.starts_with('.') => return Err(err(l, format!("unsupported directive {s} in a function body"))),
                        _ => body.push(Stmt::Inst(self.inst()?)),
                    }
                }
                Some(t) => return Err(err(l, format!("unexpected {t:?} in function body"))),
            }
        }
        f.body = Some(body);
        Ok(f)
    }

    fn reg_decl(&mut self) -> Result<Stmt, EmuError> {
        let l = self.line();
        let ty;
        loop {
            let x = self.id()?;
            if x == ".v2" || x == ".v4" {
                return Err(err(l, "vector registers are not supported"));
            }
            if let Some(t) = x.strip_prefix('.') {
                ty = t.to_string();
                if type_size(t).is_none() {
                    return Err(err(l, format!("unsupported register type {x}")));
                }
                break;
            }
        }
        let mut names = Vec::new();
        loop {
            let n = self.id()?;
            if self.is_p('<') {
                self.i += 1;
                let k = self.int()?;
                self.expect_p('>')?;
                if k > 65_536 {
                    return Err(err(l, "too many registers"));
                }
                for j in 0..k {
                    names.push(format!("{n}{j}"));
                }
            } else {
                names.push(n);
            }
            if self.is_p(',') {
                self.i += 1;
                continue;
            }
            self.expect_p(';')?;
            break;
        }
        Ok(Stmt::Reg { ty, names })
    }

    fn inst(&mut self) -> Result<RawInst, EmuError> {
        let line = self.line();
        let mut guard = None;
        if self.is_p('@') {
            self.i += 1;
            let neg = if self.is_p('!') {
                self.i += 1;
                true
            } else {
                false
            };
            guard = Some((self.id()?, neg));
        }
        let opcode = self.id()?;
        let mut operands = Vec::new();
        if !self.is_p(';') {
            loop {
                let o = self.operand().map_err(|e| {
                    let why = e.to_string();
                    let why = why.split(": ").last().unwrap_or("").to_string();
                    err(line, format!("unsupported instruction {opcode}: cannot read its operands ({why})"))
                })?;
                operands.push(o);
                if self.is_p(',') {
                    self.i += 1;
                    continue;
                }
                break;
            }
        }
        if !self.is_p(';') {
            return Err(err(line, format!("{opcode}: expected ';' after the operands")));
        }
        self.i += 1;
        Ok(RawInst { guard, opcode, operands, line })
    }

    fn operand(&mut self) -> Result<Operand, EmuError> {
        let l = self.line();
        match self.next()? {
            Tok::P('[') => {
                let mut base = None;
                let mut off = 0i64;
                match self.next()? {
                    Tok::Id(s) => base = Some(s),
                    Tok::Int(v) => off = v as i64,
                    t => return Err(err(l, format!("bad address {t:?}"))),
                }
                off += self.sym_off()?;
                self.expect_p(']')?;
                Ok(Operand::Mem(base, off))
            }
            Tok::P('{') => {
                let mut v = Vec::new();
                while !self.is_p('}') {
                    v.push(self.operand()?);
                    if self.is_p(',') {
                        self.i += 1;
                    }
                }
                self.i += 1;
                Ok(Operand::Vec(v))
            }
            Tok::P('(') => {
                let mut v = Vec::new();
                while !self.is_p(')') {
                    v.push(self.operand()?);
                    if self.is_p(',') {
                        self.i += 1;
                    }
                }
                self.i += 1;
                Ok(Operand::List(v))
            }
            Tok::P('!') => Ok(Operand::Not(self.id()?)),
            Tok::P('-') => match self.next()? {
                Tok::Int(v) => Ok(Operand::Int((v as i64).wrapping_neg())),
                Tok::Float(f) => Ok(Operand::Float(-f)),
                t => Err(err(l, format!("bad operand -{t:?}"))),
            },
            Tok::Int(v) => Ok(Operand::Int(v as i64)),
            Tok::Float(f) => Ok(Operand::Float(f)),
            Tok::F32Bits(b) => Ok(Operand::F32Bits(b)),
            Tok::F64Bits(b) => Ok(Operand::F64Bits(b)),
            Tok::Id(s) => {
                if self.is_p('|') {
                    self.i += 1;
                    let q = self.id()?;
                    return Ok(Operand::Pair(s, q));
                }
                if self.is_p('+') {
                    let off = self.sym_off()?;
                    return Ok(Operand::SymOff(s, off));
                }
                Ok(Operand::Name(s))
            }
            t => Err(err(l, format!("unexpected operand {t:?}"))),
        }
    }
}

/// Parses a PTX module.
pub fn parse(src: &str) -> Result<PtxModule, EmuError> {
    let t = lex(src)?;
    let mut p = Parser { t, i: 0 };
    p.module()
}

/// Links several parsed PTX modules into one: a function or variable defined in one
/// satisfies `.extern` declarations of the others; two definitions of one name are an error
/// (except `.weak`/`.common` ones, of which the first wins).
pub fn link(parts: Vec<PtxModule>) -> Result<PtxModule, EmuError> {
    let mut it = parts.into_iter();
    let Some(mut out) = it.next() else {
        return Err(EmuError::InvalidPtx("the image holds no PTX".into()));
    };
    for m in it {
        out.version = out.version.max(m.version);
        for f in m.funcs {
            match out.funcs.iter().position(|g| g.name == f.name) {
                Some(i) => {
                    if out.funcs[i].body.is_none() {
                        out.funcs[i] = f;
                    } else if f.body.is_some() && f.is_entry {
                        return Err(EmuError::InvalidPtx(format!("line {}: kernel {} is defined twice", f.line, f.name)));
                    }
                }
                None => out.funcs.push(f),
            }
        }
        for v in m.vars {
            match out.vars.iter().position(|w| w.name == v.name) {
                Some(i) => {
                    if out.vars[i].is_extern && !v.is_extern {
                        out.vars[i] = v;
                    }
                }
                None => out.vars.push(v),
            }
        }
    }
    Ok(out)
}
