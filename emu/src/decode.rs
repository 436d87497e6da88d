//! Pre-decoding: turns a parsed `.entry` (with every `.func` it calls inlined) into a
//! compact instruction list with registers resolved to indices, symbols to addresses
//! and every operation to a function pointer. Anything unsupported is refused here,
//! at module load, with the instruction and its line.

use std::collections::{HashMap, HashSet};

use crate::error::EmuError;
use crate::module::GlobalVar;
use crate::ops::{self, CvtSpec, NumTy, Rnd, F1, F2, F3};
use crate::ptx::{type_size, DeclSpace, FuncDecl, Operand, PtxModule, RawInst, Stmt};
use half::{bf16, f16};

/// Generic-address windows of the non-global spaces (device memory lives far above).
pub const SHARED_WIN: u64 = 0x1000_0000_0000;
pub const LOCAL_WIN: u64 = 0x2000_0000_0000;
pub const PARAM_WIN: u64 = 0x3000_0000_0000;
pub const WIN_SIZE: u64 = 1 << 32;
pub const NOREG: u32 = u32::MAX;
/// Register index holding the carry flag of add.cc/addc/sub.cc/subc/mad.cc/madc.
pub const CC_REG: u32 = 1;
const MAX_CODE: usize = 1_000_000;
/// Limits that keep a hostile module from making the server allocate without bound.
pub const MAX_REGS: u32 = 16_384;
pub const MAX_LOCAL_BYTES: u32 = 512 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    SmId,
    NSmId,
    GridId,
    Clock,
    Clock64,
    GlobalTimer,
    DynSmem,
    TotalSmem,
    LanemaskEq,
    LanemaskLt,
    LanemaskLe,
    LanemaskGt,
    LanemaskGe,
}

#[derive(Clone, Copy, Debug)]
pub enum Src {
    R(u32),
    I(u64),
    S(Sreg),
}

#[derive(Clone, Copy, Debug)]
pub enum PSrc {
    P(u32, bool),
    I(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    KParam,
    Generic,
}

#[derive(Clone, Copy, Debug)]
pub struct Addr {
    pub base: Option<u32>,
    pub off: i64,
}

#[derive(Clone, Copy, Debug)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Mov {
        d: u32,
        a: Src,
    },
    Un {
        d: u32,
        a: Src,
        f: F1,
    },
    Bin {
        d: u32,
        a: Src,
        b: Src,
        f: F2,
        /// Which hot operation `f` is (see `hot_bin`), so the interpreter can run it inlined;
        /// 0 = call `f`.
        k: u8,
    },
    Tern {
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        f: F3,
        k: u8,
    },
    Quad {
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        e: Src,
        f: ops::F4,
    },
    Cvt {
        d: u32,
        a: Src,
        s: CvtSpec,
    },
    Setp {
        p: u32,
        q: u32,
        a: Src,
        b: Src,
        f: ops::Cmp,
        comb: Option<(BoolOp, PSrc)>,
    },
    Set {
        d: u32,
        a: Src,
        b: Src,
        f: ops::Cmp,
        comb: Option<(BoolOp, PSrc)>,
        t: u64,
    },
    Selp {
        d: u32,
        a: Src,
        b: Src,
        p: PSrc,
    },
    PLogic {
        d: u32,
        a: PSrc,
        b: PSrc,
        op: BoolOp,
    },
    Ld {
        sp: Space,
        d: [u32; 4],
        n: u8,
        size: u8,
        sext: u8,
        dbits: u8,
        a: Addr,
    },
    St {
        sp: Space,
        s: [Src; 4],
        n: u8,
        size: u8,
        a: Addr,
    },
    Atom {
        sp: Space,
        d: u32,
        a: Addr,
        b: Src,
        c: Src,
        size: u8,
        f: F3,
    },
    Bra {
        t: u32,
    },
    Exit,
    Trap,
    Bar,
    /// `bar.red`: barrier plus a CTA-wide reduction of a predicate (0 popc, 1 and, 2 or).
    BarRed {
        mode: u8,
        d: u32,
        a: PSrc,
    },
    Nop,
    Shfl {
        mode: u8,
        d: u32,
        p: u32,
        a: Src,
        b: Src,
        c: Src,
    },
    Vote {
        mode: u8,
        d: u32,
        a: PSrc,
    },
    Activemask {
        d: u32,
    },
    Match {
        all: bool,
        d: u32,
        p: u32,
        a: Src,
    },
    /// Extended-precision arithmetic through the carry flag (register `CC_REG`):
    /// kind 0 add, 1 addc, 2 sub, 3 subc, 4 mad.lo, 5 mad.hi, 6 madc.lo, 7 madc.hi.
    Carry {
        kind: u8,
        d: u32,
        a: Src,
        b: Src,
        c: Src,
        w64: bool,
        signed: bool,
        set_cc: bool,
    },
    Redux {
        d: u32,
        a: Src,
        f: F2,
    },
    Pack {
        d: u32,
        s: [Src; 4],
        n: u8,
        w: u8,
    },
    Unpack {
        d: [u32; 4],
        a: Src,
        n: u8,
        w: u8,
    },
    /// vprintf: the operands are offsets of the call's `.param` slots in the local frame.
    Printf {
        ret: u32,
        fmt: u32,
        args: u32,
    },
    AssertFail {
        msg: u32,
        file: u32,
        line: u32,
        func: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Ins {
    pub op: Op,
    pub guard: PSrc,
    pub line: u32,
}

/// A kernel ready to run.
#[derive(Debug)]
pub struct Program {
    pub name: String,
    pub code: Vec<Ins>,
    pub nregs: u32,
    pub npreds: u32,
    pub static_shared: u32,
    /// Offset of dynamic (`extern .shared`) memory in the CTA's shared space.
    pub dyn_shared_offset: u32,
    /// Per-thread local memory (`.local` variables and the call parameter slots).
    pub local_bytes: u32,
    /// Size of the kernel's parameter buffer.
    pub param_bytes: u32,
}

impl Program {
    pub fn num_regs_estimate(&self) -> u32 {
        (self.nregs / 2 + self.npreds / 4 + 8).clamp(16, 255)
    }
}

#[derive(Clone, Copy, Debug)]
enum Sym {
    Reg(u32, u8),
    Pred(u32),
    KParam(u32),
    Frame(u32),
    Shared(u32),
    Global(u64),
}

struct Dec<'a> {
    funcs: HashMap<&'a str, &'a FuncDecl>,
    globals: &'a HashMap<String, GlobalVar>,
    code: Vec<Ins>,
    nregs: u32,
    npreds: u32,
    local_top: u32,
    module_shared: HashMap<String, u32>,
    func_shared: HashMap<(String, String), u32>,
    dyn_off: u32,
    scratch: u32,
    stack: Vec<String>,
    max_regs: u32,
    max_preds: u32,
    max_local: u32,
}

struct Frame {
    scopes: Vec<HashMap<String, Sym>>,
    labels: HashMap<String, u32>,
    fixups: Vec<(usize, String, u32)>,
    ret_fixups: Vec<usize>,
    is_kernel: bool,
}

fn perr(line: u32, msg: impl std::fmt::Display) -> EmuError {
    EmuError::InvalidPtx(format!("line {line}: {msg}"))
}

fn special(name: &str) -> Option<Sreg> {
    let comp = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((a, b)) = name.split_once('.') {
        let c = comp(b)?;
        return Some(match a {
            "%tid" => Sreg::Tid(c),
            "%ntid" => Sreg::Ntid(c),
            "%ctaid" => Sreg::Ctaid(c),
            "%nctaid" => Sreg::Nctaid(c),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Sreg::LaneId,
        "%warpid" => Sreg::WarpId,
        "%nwarpid" => Sreg::NWarpId,
        "%smid" => Sreg::SmId,
        "%nsmid" => Sreg::NSmId,
        "%gridid" => Sreg::GridId,
        "%clock" => Sreg::Clock,
        "%clock64" => Sreg::Clock64,
        "%globaltimer" => Sreg::GlobalTimer,
        "%dynamic_smem_size" => Sreg::DynSmem,
        "%total_smem_size" => Sreg::TotalSmem,
        "%lanemask_eq" => Sreg::LanemaskEq,
        "%lanemask_lt" => Sreg::LanemaskLt,
        "%lanemask_le" => Sreg::LanemaskLe,
        "%lanemask_gt" => Sreg::LanemaskGt,
        "%lanemask_ge" => Sreg::LanemaskGe,
        _ => return None,
    })
}

fn align_up(v: u32, a: u32) -> u32 {
    let a = a.max(1);
    v.div_ceil(a).saturating_mul(a)
}

fn call_target(ri: &RawInst) -> Option<&str> {
    for o in &ri.operands {
        if let Operand::Name(n) = o {
            return Some(n);
        }
    }
    None
}

/// Instruction modifiers split into the useful parts.
struct Mods<'s> {
    base: &'s str,
    all: Vec<&'s str>,
}

impl<'s> Mods<'s> {
    fn new(op: &'s str) -> Self {
        let mut it = op.split('.');
        let base = it.next().unwrap_or("");
        Mods { base, all: it.collect() }
    }
    fn has(&self, m: &str) -> bool {
        self.all.contains(&m)
    }
    fn types(&self) -> Vec<&'s str> {
        self.all.iter().copied().filter(|m| type_size(m).is_some() || *m == "pred").collect()
    }
    fn ty(&self) -> Option<&'s str> {
        self.types().last().copied()
    }
    fn space(&self) -> Space {
        for m in &self.all {
            match *m {
                "global" | "const" => return Space::Global,
                "shared" => return Space::Shared,
                "local" => return Space::Local,
                "param" => return Space::KParam,
                _ => {}
            }
        }
        Space::Generic
    }
    fn vec(&self) -> u8 {
        if self.has("v2") {
            2
        } else if self.has("v4") {
            4
        } else if self.has("v8") {
            8
        } else {
            1
        }
    }
    fn rnd(&self) -> Rnd {
        for m in &self.all {
            match *m {
                "rn" | "rni" => return Rnd::Rn,
                "rz" | "rzi" => return Rnd::Rz,
                "rm" | "rmi" => return Rnd::Rm,
                "rp" | "rpi" => return Rnd::Rp,
                "rna" => return Rnd::Rna,
                _ => {}
            }
        }
        Rnd::None
    }
    fn int_rnd(&self) -> bool {
        self.all.iter().any(|m| matches!(*m, "rni" | "rzi" | "rmi" | "rpi"))
    }
}

/// Shared variables and functions reachable from the kernel.
fn reachable<'a>(m: &'a PtxModule, k: &'a FuncDecl) -> Vec<&'a FuncDecl> {
    let by: HashMap<&str, &FuncDecl> = m.funcs.iter().filter(|f| f.body.is_some()).map(|f| (f.name.as_str(), f)).collect();
    let mut seen = HashSet::new();
    let mut out = vec![k];
    seen.insert(k.name.as_str());
    let mut i = 0;
    while i < out.len() {
        let f = out[i];
        i += 1;
        for s in f.body.as_deref().unwrap_or(&[]) {
            if let Stmt::Inst(ri) = s {
                if ri.opcode.starts_with("call") {
                    if let Some(t) = call_target(ri) {
                        if let Some(g) = by.get(t) {
                            if seen.insert(g.name.as_str()) {
                                out.push(g);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn decode_kernel(m: &PtxModule, k: &FuncDecl, globals: &HashMap<String, GlobalVar>) -> Result<Program, EmuError> {
    // static shared layout: module-level shared variables, then those of each reachable function
    let mut top = 0u32;
    let mut module_shared = HashMap::new();
    let mut func_shared = HashMap::new();
    let mut dyn_align = 16u32;
    let mut dyn_names = Vec::new();
    for v in &m.vars {
        if v.space == DeclSpace::Shared {
            if v.is_extern || v.elems == Some(0) {
                dyn_align = dyn_align.max(v.align);
                dyn_names.push(v.name.clone());
            } else {
                top = align_up(top, v.align);
                module_shared.insert(v.name.clone(), top);
                top = top.saturating_add(v.size().min(u32::MAX as u64) as u32);
            }
        }
    }
    let funcs = reachable(m, k);
    let mut func_dyn = Vec::new();
    for f in &funcs {
        for s in f.body.as_deref().unwrap_or(&[]) {
            if let Stmt::Var(v) = s {
                if v.space == DeclSpace::Shared {
                    if v.is_extern || v.elems == Some(0) {
                        dyn_align = dyn_align.max(v.align);
                        func_dyn.push((f.name.clone(), v.name.clone()));
                    } else {
                        top = align_up(top, v.align);
                        func_shared.insert((f.name.clone(), v.name.clone()), top);
                        top = top.saturating_add(v.size().min(u32::MAX as u64) as u32);
                    }
                }
            }
        }
    }
    let static_shared = top;
    let dyn_off = align_up(top, dyn_align);
    for n in dyn_names {
        module_shared.insert(n, dyn_off);
    }
    for key in func_dyn {
        func_shared.insert(key, dyn_off);
    }
    let mut d = Dec {
        funcs: m.funcs.iter().filter(|f| f.body.is_some()).map(|f| (f.name.as_str(), f)).collect(),
        globals,
        code: Vec::new(),
        nregs: 2, // 0: scratch for `_` destinations, 1: the carry flag CC.CF
        npreds: 0,
        local_top: 0,
        module_shared,
        func_shared,
        dyn_off,
        scratch: 0,
        stack: vec![k.name.clone()],
        max_regs: 0,
        max_preds: 0,
        max_local: 0,
    };
    let mut bind = HashMap::new();
    let mut off = 0u32;
    for p in &k.params {
        off = align_up(off, p.align);
        bind.insert(p.name.clone(), Sym::KParam(off));
        off = off.saturating_add(p.size());
    }
    d.func(k, bind, true)?;
    let regs = d.nregs.max(d.max_regs);
    if regs > MAX_REGS || d.npreds.max(d.max_preds) > MAX_REGS {
        return Err(perr(k.line, format!("kernel {} uses {regs} registers, more than the {MAX_REGS} supported", k.name)));
    }
    let local = d.local_top.max(d.max_local);
    if local > MAX_LOCAL_BYTES {
        return Err(perr(k.line, format!("kernel {} needs {local} bytes of local memory per thread, more than {MAX_LOCAL_BYTES}", k.name)));
    }
    d.code.push(Ins { op: Op::Exit, guard: PSrc::I(true), line: k.line });
    Ok(Program {
        name: k.name.clone(),
        code: d.code,
        nregs: d.nregs.max(d.max_regs),
        npreds: d.npreds.max(d.max_preds).max(1),
        static_shared,
        dyn_shared_offset: dyn_off,
        local_bytes: align_up(d.local_top.max(d.max_local), 16),
        param_bytes: off,
    })
}

fn tyname_bits(t: &str) -> u8 {
    (type_size(t).unwrap_or(8) * 8) as u8
}

impl<'a> Dec<'a> {
    fn frame_alloc(&mut self, size: u32, align: u32) -> u32 {
        let o = align_up(self.local_top, align.max(1));
        self.local_top = o.saturating_add(size.max(1));
        o
    }

    fn emit(&mut self, mut op: Op, guard: PSrc, line: u32) -> Result<usize, EmuError> {
        match &mut op {
            Op::Bin { f, k, .. } => *k = hot_bin(*f),
            Op::Tern { f, k, .. } => *k = hot_tern(*f),
            _ => {}
        }
        if self.code.len() >= MAX_CODE {
            return Err(perr(line, "kernel too large after inlining"));
        }
        self.code.push(Ins { op, guard, line });
        Ok(self.code.len() - 1)
    }

    fn func(&mut self, f: &FuncDecl, bind: HashMap<String, Sym>, is_kernel: bool) -> Result<(), EmuError> {
        let mut fr = Frame { scopes: vec![bind], labels: HashMap::new(), fixups: Vec::new(), ret_fixups: Vec::new(), is_kernel };
        for s in f.body.as_deref().unwrap_or(&[]) {
            match s {
                Stmt::Reg { ty, names } => {
                    for n in names {
                        let sym = if ty == "pred" {
                            self.npreds += 1;
                            Sym::Pred(self.npreds - 1)
                        } else {
                            self.nregs += 1;
                            Sym::Reg(self.nregs - 1, tyname_bits(ty))
                        };
                        if self.nregs > MAX_REGS || self.npreds > MAX_REGS {
                            return Err(perr(f.line, format!("{} declares more than {MAX_REGS} registers", f.name)));
                        }
                        fr.scopes.last_mut().unwrap().insert(n.clone(), sym);
                    }
                }
                Stmt::Var(v) => {
                    let sym = match v.space {
                        DeclSpace::Local | DeclSpace::Param => Sym::Frame(self.frame_alloc(v.size().min(u32::MAX as u64) as u32, v.align)),
                        DeclSpace::Shared => Sym::Shared(*self.func_shared.get(&(f.name.clone(), v.name.clone())).unwrap_or(&self.dyn_off)),
                        _ => return Err(perr(v.line, format!("function-scope .global/.const variable {} is not supported", v.name))),
                    };
                    fr.scopes.last_mut().unwrap().insert(v.name.clone(), sym);
                }
                Stmt::Label(l) => {
                    fr.labels.insert(l.clone(), self.code.len() as u32);
                }
                Stmt::Open => fr.scopes.push(HashMap::new()),
                Stmt::Close => {
                    if fr.scopes.len() > 1 {
                        fr.scopes.pop();
                    }
                }
                Stmt::Inst(ri) => self.inst(&mut fr, ri)?,
            }
        }
        let end = self.code.len() as u32;
        for (idx, l, line) in fr.fixups {
            let t = *fr.labels.get(&l).ok_or_else(|| perr(line, format!("branch to unknown label {l}")))?;
            if let Op::Bra { t: tt } = &mut self.code[idx].op {
                *tt = t;
            }
        }
        for idx in fr.ret_fixups {
            if let Op::Bra { t } = &mut self.code[idx].op {
                *t = end;
            }
        }
        Ok(())
    }

    fn lookup(&self, fr: &Frame, name: &str) -> Option<Sym> {
        for s in fr.scopes.iter().rev() {
            if let Some(x) = s.get(name) {
                return Some(*x);
            }
        }
        if let Some(g) = self.globals.get(name) {
            return Some(Sym::Global(g.addr));
        }
        if let Some(o) = self.module_shared.get(name) {
            return Some(Sym::Shared(*o));
        }
        None
    }

    fn reg(&self, fr: &Frame, o: &Operand, line: u32, what: &str) -> Result<u32, EmuError> {
        match o {
            Operand::Name(n) if n == "_" => Ok(self.scratch),
            Operand::Name(n) => match self.lookup(fr, n) {
                Some(Sym::Reg(i, _)) => Ok(i),
                _ => Err(perr(line, format!("{what}: {n} is not a register"))),
            },
            _ => Err(perr(line, format!("{what}: expected a register, found {o:?}"))),
        }
    }

    fn reg_bits(&self, fr: &Frame, o: &Operand) -> u8 {
        if let Operand::Name(n) = o {
            if let Some(Sym::Reg(_, b)) = self.lookup(fr, n) {
                return b;
            }
        }
        64
    }

    fn pred(&self, fr: &Frame, o: &Operand, line: u32, what: &str) -> Result<u32, EmuError> {
        match o {
            Operand::Name(n) if n == "_" => Ok(NOREG),
            Operand::Name(n) => match self.lookup(fr, n) {
                Some(Sym::Pred(i)) => Ok(i),
                _ => Err(perr(line, format!("{what}: {n} is not a predicate"))),
            },
            _ => Err(perr(line, format!("{what}: expected a predicate, found {o:?}"))),
        }
    }

    fn psrc(&self, fr: &Frame, o: &Operand, line: u32, what: &str) -> Result<PSrc, EmuError> {
        match o {
            Operand::Not(n) => Ok(PSrc::P(self.pred(fr, &Operand::Name(n.clone()), line, what)?, true)),
            Operand::Int(v) => Ok(PSrc::I(*v != 0)),
            _ => Ok(PSrc::P(self.pred(fr, o, line, what)?, false)),
        }
    }

    fn sym_value(&self, s: Sym, line: u32, name: &str) -> Result<u64, EmuError> {
        Ok(match s {
            Sym::KParam(o) | Sym::Frame(o) | Sym::Shared(o) => o as u64,
            Sym::Global(a) => a,
            _ => return Err(perr(line, format!("{name} is not an address"))),
        })
    }

    /// A source operand of type `ty` (type name without dot).
    fn src(&self, fr: &Frame, o: &Operand, ty: &str, line: u32, what: &str) -> Result<Src, EmuError> {
        let bits = tyname_bits(ty) as u32;
        let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
        Ok(match o {
            Operand::Name(n) => {
                if let Some(s) = special(n) {
                    return Ok(Src::S(s));
                }
                match self.lookup(fr, n) {
                    Some(Sym::Reg(i, _)) => Src::R(i),
                    Some(Sym::Pred(_)) => return Err(perr(line, format!("{what}: predicate {n} used as a value"))),
                    Some(s) => Src::I(self.sym_value(s, line, n)?),
                    None => return Err(perr(line, format!("{what}: unknown name {n}"))),
                }
            }
            Operand::SymOff(n, off) => match self.lookup(fr, n) {
                Some(s) => Src::I(self.sym_value(s, line, n)?.wrapping_add(*off as u64)),
                None => return Err(perr(line, format!("{what}: unknown name {n}"))),
            },
            Operand::Int(v) => {
                // in a float instruction an integer literal is taken as the bit pattern
                // (compilers write float constants as 0f/0d hex; `0` is 0.0 either way)
                Src::I(*v as u64 & mask)
            }
            Operand::Float(f) => Src::I(fbits(*f, ty)),
            Operand::F32Bits(b) => Src::I(if ty == "f64" {
                (f32::from_bits(*b) as f64).to_bits()
            } else if bits == 16 {
                fbits(f32::from_bits(*b) as f64, ty)
            } else {
                *b as u64
            }),
            Operand::F64Bits(b) => Src::I(if ty == "f64" || ty == "b64" { *b } else { fbits(f64::from_bits(*b), ty) }),
            _ => return Err(perr(line, format!("{what}: unexpected operand {o:?}"))),
        })
    }

    fn addr(&self, fr: &Frame, o: &Operand, sp: Space, line: u32, what: &str) -> Result<(Space, Addr), EmuError> {
        let Operand::Mem(base, off) = o else {
            return Err(perr(line, format!("{what}: expected an address [..], found {o:?}")));
        };
        let Some(b) = base else {
            return Ok((sp, Addr { base: None, off: *off }));
        };
        let s = self.lookup(fr, b).ok_or_else(|| perr(line, format!("{what}: unknown name {b}")))?;
        Ok(match s {
            Sym::Reg(i, _) => {
                // a register address in .param space of a callee means its frame
                let sp = if sp == Space::KParam && !fr.is_kernel { Space::Local } else { sp };
                (sp, Addr { base: Some(i), off: *off })
            }
            Sym::Pred(_) => return Err(perr(line, format!("{what}: predicate {b} used as an address"))),
            Sym::KParam(o) => match sp {
                Space::Generic => (sp, Addr { base: None, off: (PARAM_WIN + o as u64) as i64 + off }),
                _ => (Space::KParam, Addr { base: None, off: o as i64 + off }),
            },
            Sym::Frame(o) => match sp {
                Space::Generic => (sp, Addr { base: None, off: (LOCAL_WIN + o as u64) as i64 + off }),
                _ => (Space::Local, Addr { base: None, off: o as i64 + off }),
            },
            Sym::Shared(o) => match sp {
                Space::Generic => (sp, Addr { base: None, off: (SHARED_WIN + o as u64) as i64 + off }),
                _ => (Space::Shared, Addr { base: None, off: o as i64 + off }),
            },
            Sym::Global(a) => (if sp == Space::Generic { Space::Generic } else { Space::Global }, Addr { base: None, off: a as i64 + off }),
        })
    }

    fn inst(&mut self, fr: &mut Frame, ri: &RawInst) -> Result<(), EmuError> {
        let line = ri.line;
        let guard = match &ri.guard {
            None => PSrc::I(true),
            Some((p, neg)) => PSrc::P(self.pred(fr, &Operand::Name(p.clone()), line, "guard")?, *neg),
        };
        let md = Mods::new(&ri.opcode);
        let ops = &ri.operands;
        let name = ri.opcode.as_str();
        let unsup = || perr(line, format!("unsupported instruction {name}"));
        let nops = |n: usize| -> Result<(), EmuError> {
            if ops.len() < n {
                Err(perr(line, format!("{name}: expected {n} operands, found {}", ops.len())))
            } else {
                Ok(())
            }
        };
        let ty = md.ty().unwrap_or("b32");
        let op: Op = match md.base {
            "mov" => {
                nops(2)?;
                if ty == "pred" {
                    let d = self.pred(fr, &ops[0], line, name)?;
                    let a = self.psrc(fr, &ops[1], line, name)?;
                    Op::PLogic { d, a, b: PSrc::I(false), op: BoolOp::Or }
                } else if let Operand::Vec(v) = &ops[1] {
                    let d = self.reg(fr, &ops[0], line, name)?;
                    let w = (tyname_bits(ty) as usize / v.len().max(1)) as u8;
                    let wt = format!("b{w}");
                    let mut s = [Src::I(0); 4];
                    for (k, x) in v.iter().enumerate().take(4) {
                        s[k] = if matches!(x, Operand::Name(n) if n == "_") { Src::I(0) } else { self.src(fr, x, &wt, line, name)? };
                    }
                    Op::Pack { d, s, n: v.len() as u8, w }
                } else if let Operand::Vec(v) = &ops[0] {
                    let a = self.src(fr, &ops[1], ty, line, name)?;
                    let w = (tyname_bits(ty) as usize / v.len().max(1)) as u8;
                    let mut d = [self.scratch; 4];
                    for (k, x) in v.iter().enumerate().take(4) {
                        d[k] = self.reg(fr, x, line, name)?;
                    }
                    Op::Unpack { d, a, n: v.len() as u8, w }
                } else {
                    let d = self.reg(fr, &ops[0], line, name)?;
                    let a = self.src(fr, &ops[1], ty, line, name)?;
                    Op::Mov { d, a }
                }
            }
            "ld" | "ldu" | "st" => {
                nops(2)?;
                if md.all.iter().any(|m| m.starts_with("L2::cache_hint")) || ops.len() > 2 {
                    return Err(unsup());
                }
                let is_st = md.base == "st";
                let n = md.vec();
                if n > 4 || ty == "b128" {
                    return Err(unsup());
                }
                let size = type_size(ty).unwrap_or(4) as u8;
                let (aop, vop) = if is_st { (&ops[0], &ops[1]) } else { (&ops[1], &ops[0]) };
                let (sp, a) = self.addr(fr, aop, md.space(), line, name)?;
                let vals: Vec<Operand> = match vop {
                    Operand::Vec(v) => v.clone(),
                    x => vec![x.clone()],
                };
                if vals.len() != n as usize {
                    return Err(perr(line, format!("{name}: expected {n} values")));
                }
                if is_st {
                    let mut s = [Src::I(0); 4];
                    for (k, x) in vals.iter().enumerate() {
                        s[k] = self.src(fr, x, ty, line, name)?;
                    }
                    Op::St { sp, s, n, size, a }
                } else {
                    let mut d = [self.scratch; 4];
                    for (k, x) in vals.iter().enumerate() {
                        d[k] = self.reg(fr, x, line, name)?;
                    }
                    let dbits = self.reg_bits(fr, &vals[0]).max(size * 8);
                    // sign extension matters only into a wider register
                    let sext = if ty.starts_with('s') && size * 8 < dbits { size * 8 } else { 0 };
                    Op::Ld { sp, d, n, size, sext, dbits, a }
                }
            }
            "cvta" => {
                nops(2)?;
                let d = self.reg(fr, &ops[0], line, name)?;
                let a = self.src(fr, &ops[1], "u64", line, name)?;
                let to = md.has("to");
                let win = match md.space() {
                    Space::Shared => SHARED_WIN,
                    Space::Local => LOCAL_WIN,
                    Space::KParam => PARAM_WIN,
                    _ => 0,
                };
                if win == 0 {
                    Op::Mov { d, a }
                } else if to {
                    Op::Bin { d, a, b: Src::I(win), f: |x, w| x.wrapping_sub(w) & (WIN_SIZE - 1), k: 0 }
                } else {
                    Op::Bin { d, a, b: Src::I(win), f: |x, w| (x & (WIN_SIZE - 1)) + w, k: 0 }
                }
            }
            "isspacep" => {
                nops(2)?;
                let p = self.pred(fr, &ops[0], line, name)?;
                let a = self.src(fr, &ops[1], "u64", line, name)?;
                let f: ops::Cmp = match md.space() {
                    Space::Shared => |x, _| (SHARED_WIN..SHARED_WIN + WIN_SIZE).contains(&x),
                    Space::Local => |x, _| (LOCAL_WIN..LOCAL_WIN + WIN_SIZE).contains(&x),
                    Space::KParam => |x, _| (PARAM_WIN..PARAM_WIN + WIN_SIZE).contains(&x),
                    _ => |x, _| x >= PARAM_WIN + WIN_SIZE,
                };
                Op::Setp { p, q: NOREG, a, b: Src::I(0), f, comb: None }
            }
            "addc" | "subc" | "madc" => return self.carry(fr, ri, &md, guard),
            "add" | "sub" | "mad" if md.has("cc") => return self.carry(fr, ri, &md, guard),
            "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor" | "shl" | "shr" | "copysign" | "mul24" => {
                nops(3)?;
                if md.has("cc") || md.has("relu") {
                    return Err(unsup());
                }
                if ty == "pred" {
                    let d = self.pred(fr, &ops[0], line, name)?;
                    let a = self.psrc(fr, &ops[1], line, name)?;
                    let b = self.psrc(fr, &ops[2], line, name)?;
                    let op = match md.base {
                        "and" => BoolOp::And,
                        "or" => BoolOp::Or,
                        "xor" => BoolOp::Xor,
                        _ => return Err(unsup()),
                    };
                    Op::PLogic { d, a, b, op }
                } else {
                    let d = self.reg(fr, &ops[0], line, name)?;
                    let sty = if matches!(md.base, "shl" | "shr") { "u32" } else { ty };
                    let a = self.src(fr, &ops[1], ty, line, name)?;
                    let b = self.src(fr, &ops[2], sty, line, name)?;
                    let f = bin_fn(&md, ty).ok_or_else(unsup)?;
                    Op::Bin { d, a, b, f, k: 0 }
                }
            }
            "mad" | "fma" | "bfe" | "prmt" | "mad24" | "shf" => {
                nops(4)?;
                if md.has("cc") || md.has("relu") {
                    return Err(unsup());
                }
                let d = self.reg(fr, &ops[0], line, name)?;
                let (tb, tc) = match md.base {
                    "bfe" => ("u32", "u32"),
                    "mad" if md.has("wide") => (ty, wide_ty(ty)),
                    _ => (ty, ty),
                };
                let a = self.src(fr, &ops[1], ty, line, name)?;
                let b = self.src(fr, &ops[2], tb, line, name)?;
                let c = self.src(fr, &ops[3], tc, line, name)?;
                let f = tern_fn(&md, ty).ok_or_else(unsup)?;
                Op::Tern { d, a, b, c, f, k: 0 }
            }
            "bfi" | "lop3" => {
                nops(5)?;
                let d = self.reg(fr, &ops[0], line, name)?;
                let a = self.src(fr, &ops[1], ty, line, name)?;
                let b = self.src(fr, &ops[2], ty, line, name)?;
                let c = self.src(fr, &ops[3], if md.base == "bfi" { "u32" } else { ty }, line, name)?;
                let e = self.src(fr, &ops[4], "u32", line, name)?;
                let f: ops::F4 = match (md.base, ty) {
                    ("bfi", "b32") | ("bfi", "u32") | ("bfi", "s32") => ops::bfi::<32>,
                    ("bfi", _) => ops::bfi::<64>,
                    ("lop3", "b32") => ops::lop3,
                    _ => return Err(unsup()),
                };
                Op::Quad { d, a, b, c, e, f }
            }
            "not" | "cnot" | "neg" | "abs" | "popc" | "clz" | "brev" | "bfind" | "sqrt" | "rcp" | "rsqrt" | "sin" | "cos" | "ex2"
            | "lg2" | "tanh" => {
                nops(2)?;
                if ty == "pred" {
                    let d = self.pred(fr, &ops[0], line, name)?;
                    let a = self.psrc(fr, &ops[1], line, name)?;
                    if md.base != "not" {
                        return Err(unsup());
                    }
                    Op::PLogic { d, a, b: PSrc::I(true), op: BoolOp::Xor }
                } else {
                    let d = self.reg(fr, &ops[0], line, name)?;
                    let a = self.src(fr, &ops[1], ty, line, name)?;
                    let f = un_fn(&md, ty).ok_or_else(unsup)?;
                    Op::Un { d, a, f }
                }
            }
            "testp" => {
                nops(2)?;
                let p = self.pred(fr, &ops[0], line, name)?;
                let a = self.src(fr, &ops[1], ty, line, name)?;
                let f: ops::Cmp = match (md.all.first().copied().unwrap_or(""), ty) {
                    ("finite", "f32") => |x, _| f32::from_bits(x as u32).is_finite(),
                    ("infinite", "f32") => |x, _| f32::from_bits(x as u32).is_infinite(),
                    ("number", "f32") => |x, _| !f32::from_bits(x as u32).is_nan(),
                    ("notanumber", "f32") => |x, _| f32::from_bits(x as u32).is_nan(),
                    ("normal", "f32") => |x, _| f32::from_bits(x as u32).is_normal(),
                    ("subnormal", "f32") => |x, _| f32::from_bits(x as u32).is_subnormal(),
                    ("finite", _) => |x, _| f64::from_bits(x).is_finite(),
                    ("infinite", _) => |x, _| f64::from_bits(x).is_infinite(),
                    ("number", _) => |x, _| !f64::from_bits(x).is_nan(),
                    ("notanumber", _) => |x, _| f64::from_bits(x).is_nan(),
                    ("normal", _) => |x, _| f64::from_bits(x).is_normal(),
                    ("subnormal", _) => |x, _| f64::from_bits(x).is_subnormal(),
                    _ => return Err(unsup()),
                };
                Op::Setp { p, q: NOREG, a, b: Src::I(0), f, comb: None }
            }
            "setp" | "set" => {
                nops(3)?;
                let cmp = md.all.first().copied().unwrap_or("");
                let tys = md.types();
                let sty = *tys.last().unwrap_or(&"b32");
                let f = cmp_fn(cmp, sty).ok_or_else(unsup)?;
                let comb = if ops.len() >= 4 {
                    let bop = if md.has("and") {
                        BoolOp::And
                    } else if md.has("or") {
                        BoolOp::Or
                    } else if md.has("xor") {
                        BoolOp::Xor
                    } else {
                        return Err(perr(line, format!("{name}: a fourth operand needs .and/.or/.xor")));
                    };
                    Some((bop, self.psrc(fr, &ops[3], line, name)?))
                } else {
                    None
                };
                let a = self.src(fr, &ops[1], sty, line, name)?;
                let b = self.src(fr, &ops[2], sty, line, name)?;
                if md.base == "setp" {
                    let (p, q) = match &ops[0] {
                        Operand::Pair(p, q) => {
                            (self.pred(fr, &Operand::Name(p.clone()), line, name)?, self.pred(fr, &Operand::Name(q.clone()), line, name)?)
                        }
                        o => (self.pred(fr, o, line, name)?, NOREG),
                    };
                    Op::Setp { p, q, a, b, f, comb }
                } else {
                    let d = self.reg(fr, &ops[0], line, name)?;
                    let dty = tys.first().copied().unwrap_or("u32");
                    let t = match dty {
                        "f32" => 1.0f32.to_bits() as u64,
                        "u32" | "s32" | "b32" => 0xffff_ffff,
                        _ => return Err(unsup()),
                    };
                    Op::Set { d, a, b, f, comb, t }
                }
            }
            "selp" => {
                nops(4)?;
                let d = self.reg(fr, &ops[0], line, name)?;
                let a = self.src(fr, &ops[1], ty, line, name)?;
                let b = self.src(fr, &ops[2], ty, line, name)?;
                let p = self.psrc(fr, &ops[3], line, name)?;
                Op::Selp { d, a, b, p }
            }
            "cvt" => {
                nops(2)?;
                let tys = md.types();
                if tys.len() != 2 || md.has("relu") || md.has("satfinite") {
                    return Err(unsup());
                }
                let d = self.reg(fr, &ops[0], line, name)?;
                if tys[0] == "f16x2" || tys[0] == "bf16x2" {
                    nops(3)?;
                    let a = self.src(fr, &ops[1], "f32", line, name)?;
                    let b = self.src(fr, &ops[2], "f32", line, name)?;
                    let f: F2 = if tys[0] == "f16x2" {
                        |a, b| {
                            let hi = f16::from_f32(f32::from_bits(a as u32)).to_bits() as u64;
                            let lo = f16::from_f32(f32::from_bits(b as u32)).to_bits() as u64;
                            lo | (hi << 16)
                        }
                    } else {
                        |a, b| {
                            let hi = bf16::from_f32(f32::from_bits(a as u32)).to_bits() as u64;
                            let lo = bf16::from_f32(f32::from_bits(b as u32)).to_bits() as u64;
                            lo | (hi << 16)
                        }
                    };
                    Op::Bin { d, a, b, f, k: 0 }
                } else {
                    let dst = NumTy::parse(tys[0]).ok_or_else(unsup)?;
                    let srct = NumTy::parse(tys[1]).ok_or_else(unsup)?;
                    let a = self.src(fr, &ops[1], tys[1], line, name)?;
                    Op::Cvt { d, a, s: CvtSpec { dst, src: srct, rnd: md.rnd(), int_rnd: md.int_rnd(), sat: md.has("sat") } }
                }
            }
            "atom" | "red" => {
                let has_d = md.base == "atom";
                let cas = md.has("cas");
                nops(if has_d { 3 } else { 2 } + cas as usize)?;
                let k = if has_d { 1 } else { 0 };
                let d = if has_d { self.reg(fr, &ops[0], line, name)? } else { NOREG };
                let (sp, a) = self.addr(fr, &ops[k], md.space(), line, name)?;
                let b = self.src(fr, &ops[k + 1], ty, line, name)?;
                let c = if cas { self.src(fr, &ops[k + 2], ty, line, name)? } else { Src::I(0) };
                if md.vec() > 1 {
                    return Err(unsup());
                }
                let f = atom_fn(&md, ty).ok_or_else(unsup)?;
                let size = type_size(ty).unwrap_or(4) as u8;
                Op::Atom { sp, d, a, b, c, size, f }
            }
            "bra" => {
                nops(1)?;
                let Operand::Name(l) = &ops[0] else {
                    return Err(unsup());
                };
                let idx = self.emit(Op::Bra { t: 0 }, guard, line)?;
                fr.fixups.push((idx, l.clone(), line));
                return Ok(());
            }
            "ret" => {
                if fr.is_kernel {
                    Op::Exit
                } else {
                    let idx = self.emit(Op::Bra { t: 0 }, guard, line)?;
                    fr.ret_fixups.push(idx);
                    return Ok(());
                }
            }
            "exit" => Op::Exit,
            "trap" => Op::Trap,
            "brkpt" | "membar" | "fence" | "nanosleep" | "prefetch" | "prefetchu" | "pmevent" | "discard" | "applypriority"
            | "createpolicy" => {
                if md.base == "createpolicy" {
                    return Err(unsup());
                }
                Op::Nop
            }
            "bar" | "barrier" => {
                if md.has("warp") {
                    Op::Nop
                } else if md.has("sync")
                    || md.all.is_empty()
                    || md.all == ["aligned"]
                    || md.has("aligned") && !md.has("arrive") && !md.has("red")
                {
                    Op::Bar
                } else if md.has("red") && ops.len() >= 3 {
                    let mode = if md.has("popc") {
                        0
                    } else if md.has("and") {
                        1
                    } else if md.has("or") {
                        2
                    } else {
                        return Err(unsup());
                    };
                    let d = if mode == 0 { self.reg(fr, &ops[0], line, name)? } else { self.pred(fr, &ops[0], line, name)? };
                    let a = self.psrc(fr, ops.last().expect("3 operands"), line, name)?;
                    Op::BarRed { mode, d, a }
                } else {
                    return Err(unsup());
                }
            }
            "shfl" => {
                let sync = md.has("sync");
                nops(if sync { 5 } else { 4 })?;
                let mode = if md.has("up") {
                    0
                } else if md.has("down") {
                    1
                } else if md.has("bfly") {
                    2
                } else if md.has("idx") {
                    3
                } else {
                    return Err(unsup());
                };
                let (d, p) = match &ops[0] {
                    Operand::Pair(d, p) => {
                        (self.reg(fr, &Operand::Name(d.clone()), line, name)?, self.pred(fr, &Operand::Name(p.clone()), line, name)?)
                    }
                    o => (self.reg(fr, o, line, name)?, NOREG),
                };
                let a = self.src(fr, &ops[1], "b32", line, name)?;
                let b = self.src(fr, &ops[2], "b32", line, name)?;
                let c = self.src(fr, &ops[3], "b32", line, name)?;
                Op::Shfl { mode, d, p, a, b, c }
            }
            "vote" => {
                nops(2)?;
                let mode = if md.has("all") {
                    0
                } else if md.has("any") {
                    1
                } else if md.has("uni") {
                    2
                } else if md.has("ballot") {
                    3
                } else {
                    return Err(unsup());
                };
                let d = if mode == 3 { self.reg(fr, &ops[0], line, name)? } else { self.pred(fr, &ops[0], line, name)? };
                let a = self.psrc(fr, &ops[1], line, name)?;
                Op::Vote { mode, d, a }
            }
            "activemask" => {
                nops(1)?;
                Op::Activemask { d: self.reg(fr, &ops[0], line, name)? }
            }
            "match" => {
                nops(2)?;
                let all = md.has("all");
                let (d, p) = match &ops[0] {
                    Operand::Pair(d, p) => {
                        (self.reg(fr, &Operand::Name(d.clone()), line, name)?, self.pred(fr, &Operand::Name(p.clone()), line, name)?)
                    }
                    o => (self.reg(fr, o, line, name)?, NOREG),
                };
                let a = self.src(fr, &ops[1], ty, line, name)?;
                Op::Match { all, d, p, a }
            }
            "redux" => {
                nops(2)?;
                let d = self.reg(fr, &ops[0], line, name)?;
                let a = self.src(fr, &ops[1], ty, line, name)?;
                let s = ty.starts_with('s');
                let f: F2 = match (md.all.get(1).copied().unwrap_or(""), s) {
                    ("add", _) => ops::add::<u32>,
                    ("min", false) => ops::min::<u32>,
                    ("max", false) => ops::max::<u32>,
                    ("min", true) => ops::min::<i32>,
                    ("max", true) => ops::max::<i32>,
                    ("and", _) => ops::and,
                    ("or", _) => ops::or,
                    ("xor", _) => ops::xor,
                    _ => return Err(unsup()),
                };
                Op::Redux { d, a, f }
            }
            "call" => return self.call(fr, ri, guard),
            _ => return Err(unsup()),
        };
        self.emit(op, guard, line)?;
        Ok(())
    }

    fn carry(&mut self, fr: &mut Frame, ri: &RawInst, md: &Mods, guard: PSrc) -> Result<(), EmuError> {
        let line = ri.line;
        let name = ri.opcode.as_str();
        let ops = &ri.operands;
        let ty = md.ty().unwrap_or("u32");
        if !matches!(ty, "u32" | "s32" | "u64" | "s64" | "b32" | "b64") {
            return Err(perr(line, format!("unsupported instruction {name}")));
        }
        let hi = md.has("hi");
        let kind = match md.base {
            "add" => 0,
            "addc" => 1,
            "sub" => 2,
            "subc" => 3,
            "mad" => 4 + hi as u8,
            _ => 6 + hi as u8,
        };
        let need = if kind >= 4 { 4 } else { 3 };
        if ops.len() < need {
            return Err(perr(line, format!("{name}: expected {need} operands")));
        }
        let d = self.reg(fr, &ops[0], line, name)?;
        let a = self.src(fr, &ops[1], ty, line, name)?;
        let b = self.src(fr, &ops[2], ty, line, name)?;
        let c = if kind >= 4 { self.src(fr, &ops[3], ty, line, name)? } else { Src::I(0) };
        let op = Op::Carry {
            kind,
            d,
            a,
            b,
            c,
            w64: ty.ends_with("64"),
            signed: ty.starts_with('s'),
            set_cc: md.has("cc") || matches!(md.base, "add" | "sub" | "mad"),
        };
        self.emit(op, guard, line)?;
        Ok(())
    }

    fn call(&mut self, fr: &mut Frame, ri: &RawInst, guard: PSrc) -> Result<(), EmuError> {
        let line = ri.line;
        let mut it = ri.operands.iter().peekable();
        let mut rets = Vec::new();
        if let Some(Operand::List(v)) = it.peek() {
            rets = v.clone();
            it.next();
        }
        let fname = match it.next() {
            Some(Operand::Name(n)) => n.clone(),
            _ => return Err(perr(line, "call: missing function name")),
        };
        let args = match it.next() {
            Some(Operand::List(v)) => v.clone(),
            None => Vec::new(),
            Some(_) => Vec::new(),
        };
        if it.next().is_some() || matches!(self.lookup(fr, &fname), Some(Sym::Reg(..))) {
            return Err(perr(line, format!("indirect call through {fname} is not supported")));
        }
        let frame_of = |d: &Self, o: &Operand| -> Option<u32> {
            if let Operand::Name(n) = o {
                if let Some(Sym::Frame(off)) = d.lookup(fr, n) {
                    return Some(off);
                }
            }
            None
        };
        match fname.as_str() {
            "vprintf" => {
                let fmt = args.first().and_then(|o| frame_of(self, o));
                let a = args.get(1).and_then(|o| frame_of(self, o));
                let r = rets.first().and_then(|o| frame_of(self, o)).unwrap_or(NOREG);
                let (Some(fmt), Some(args)) = (fmt, a) else {
                    return Err(perr(line, "vprintf: arguments must be .param variables"));
                };
                self.emit(Op::Printf { ret: r, fmt, args }, guard, line)?;
                return Ok(());
            }
            "__assertfail" | "__assert_fail" => {
                let g = |k: usize| args.get(k).and_then(|o| frame_of(self, o)).unwrap_or(NOREG);
                let op = Op::AssertFail { msg: g(0), file: g(1), line: g(2), func: g(3) };
                self.emit(op, guard, line)?;
                return Ok(());
            }
            _ => {}
        }
        let f = *self
            .funcs
            .get(fname.as_str())
            .ok_or_else(|| perr(line, format!("call to {fname}, which has no body in this module (not supported)")))?;
        if self.stack.contains(&fname) {
            return Err(perr(line, format!("recursive call to {fname} is not supported")));
        }
        if !matches!(guard, PSrc::I(true)) {
            // predicated call: branch around the inlined body
            let neg = match guard {
                PSrc::P(p, n) => PSrc::P(p, !n),
                x => x,
            };
            let idx = self.emit(Op::Bra { t: 0 }, neg, line)?;
            self.call(fr, &RawInst { guard: None, ..ri.clone() }, PSrc::I(true))?;
            let end = self.code.len() as u32;
            if let Op::Bra { t } = &mut self.code[idx].op {
                *t = end;
            }
            return Ok(());
        }
        let mut bind = HashMap::new();
        let mut post = Vec::new();
        for (k, p) in f.params.iter().enumerate() {
            let a = args.get(k).ok_or_else(|| perr(line, format!("call to {fname}: too few arguments")))?;
            let off = match frame_of(self, a) {
                Some(o) => o,
                None => {
                    let o = self.frame_alloc(p.size(), p.align.max(8));
                    let s = self.src(fr, a, &p.ty, line, "call argument")?;
                    let size = p.size().min(8) as u8;
                    self.emit(
                        Op::St {
                            sp: Space::Local,
                            s: [s, Src::I(0), Src::I(0), Src::I(0)],
                            n: 1,
                            size,
                            a: Addr { base: None, off: o as i64 },
                        },
                        PSrc::I(true),
                        line,
                    )?;
                    o
                }
            };
            bind.insert(p.name.clone(), Sym::Frame(off));
        }
        for (k, p) in f.rets.iter().enumerate() {
            let off = match rets.get(k) {
                Some(a) => match frame_of(self, a) {
                    Some(o) => o,
                    None => {
                        let o = self.frame_alloc(p.size(), p.align.max(8));
                        let r = self.reg(fr, a, line, "call result")?;
                        post.push((r, o, p.size().min(8) as u8));
                        o
                    }
                },
                None => self.frame_alloc(p.size(), p.align.max(8)),
            };
            bind.insert(p.name.clone(), Sym::Frame(off));
        }
        // the callee's registers and locals are dead after it returns: later calls reuse them
        let (r0, p0, l0) = (self.nregs, self.npreds, self.local_top);
        self.stack.push(fname.clone());
        self.func(f, bind, false)?;
        self.stack.pop();
        self.max_regs = self.max_regs.max(self.nregs);
        self.max_preds = self.max_preds.max(self.npreds);
        self.max_local = self.max_local.max(self.local_top);
        (self.nregs, self.npreds, self.local_top) = (r0, p0, l0);
        for (r, o, size) in post {
            self.emit(
                Op::Ld {
                    sp: Space::Local,
                    d: [r, self.scratch, self.scratch, self.scratch],
                    n: 1,
                    size,
                    sext: 0,
                    dbits: 64,
                    a: Addr { base: None, off: o as i64 },
                },
                PSrc::I(true),
                line,
            )?;
        }
        Ok(())
    }
}

fn fbits(f: f64, ty: &str) -> u64 {
    match ty {
        "f64" | "b64" => f.to_bits(),
        "f16" => f16::from_f64(f).to_bits() as u64,
        "bf16" => bf16::from_f64(f).to_bits() as u64,
        _ => (f as f32).to_bits() as u64,
    }
}

fn wide_ty(t: &str) -> &'static str {
    match t {
        "s16" => "s32",
        "u16" => "u32",
        "s32" => "s64",
        _ => "u64",
    }
}

macro_rules! by_int {
    ($ty:expr, $f:ident) => {
        match $ty {
            "u8" | "b8" => Some($f::<u8> as _),
            "u16" | "b16" => Some($f::<u16> as _),
            "u32" | "b32" => Some($f::<u32> as _),
            "u64" | "b64" => Some($f::<u64> as _),
            "s8" => Some($f::<i8> as _),
            "s16" => Some($f::<i16> as _),
            "s32" => Some($f::<i32> as _),
            "s64" => Some($f::<i64> as _),
            _ => None,
        }
    };
}

fn is_float(t: &str) -> bool {
    matches!(t, "f16" | "bf16" | "f32" | "f64" | "f16x2" | "bf16x2")
}

fn bin_fn(md: &Mods, ty: &str) -> Option<F2> {
    use ops::*;
    let sat = md.has("sat");
    if is_float(ty) {
        let f: F2 = match (md.base, ty, sat) {
            ("add", "f32", false) => fadd32,
            ("add", "f32", true) => |a, b| gsat::<f32>(fadd32(a, b)),
            ("sub", "f32", false) => fsub32,
            ("sub", "f32", true) => |a, b| gsat::<f32>(fsub32(a, b)),
            ("mul", "f32", false) => fmul32,
            ("mul", "f32", true) => |a, b| gsat::<f32>(fmul32(a, b)),
            ("div", "f32", _) => fdiv32,
            ("add", "f64", _) => fadd64,
            ("sub", "f64", _) => fsub64,
            ("mul", "f64", _) => fmul64,
            ("div", "f64", _) => fdiv64,
            ("min", "f32", _) if md.has("NaN") => |a, b| nan_or::<f32>(a, b, gmin::<f32>),
            ("max", "f32", _) if md.has("NaN") => |a, b| nan_or::<f32>(a, b, gmax::<f32>),
            ("min", "f32", _) => gmin::<f32>,
            ("max", "f32", _) => gmax::<f32>,
            ("min", "f64", _) => gmin::<f64>,
            ("max", "f64", _) => gmax::<f64>,
            ("copysign", "f32", _) => gcopysign::<f32>,
            ("copysign", "f64", _) => gcopysign::<f64>,
            ("add", "f16", _) => gadd::<f16>,
            ("sub", "f16", _) => gsub::<f16>,
            ("mul", "f16", _) => gmul::<f16>,
            ("div", "f16", _) => gdiv::<f16>,
            ("min", "f16", _) => gmin::<f16>,
            ("max", "f16", _) => gmax::<f16>,
            ("add", "bf16", _) => gadd::<bf16>,
            ("sub", "bf16", _) => gsub::<bf16>,
            ("mul", "bf16", _) => gmul::<bf16>,
            ("min", "bf16", _) => gmin::<bf16>,
            ("max", "bf16", _) => gmax::<bf16>,
            ("add", "f16x2", _) => x2_2::<0>,
            ("sub", "f16x2", _) => x2_2::<1>,
            ("mul", "f16x2", _) => x2_2::<2>,
            ("min", "f16x2", _) => x2_2::<3>,
            ("max", "f16x2", _) => x2_2::<4>,
            ("add", "bf16x2", _) => x2_2::<10>,
            ("sub", "bf16x2", _) => x2_2::<11>,
            ("mul", "bf16x2", _) => x2_2::<12>,
            ("min", "bf16x2", _) => x2_2::<13>,
            ("max", "bf16x2", _) => x2_2::<14>,
            _ => return None,
        };
        return Some(f);
    }
    let bits = type_size(ty)? * 8;
    match md.base {
        "add" if sat => (ty == "s32").then_some(sadd::<i32> as F2),
        "sub" if sat => (ty == "s32").then_some(ssub::<i32> as F2),
        "add" => by_int!(ty, add),
        "sub" => by_int!(ty, sub),
        "mul" if md.has("hi") => by_int!(ty, mulhi),
        "mul" if md.has("wide") => {
            if bits > 32 {
                return None;
            }
            by_int!(ty, mulwide)
        }
        "mul" => by_int!(ty, mullo),
        "mul24" => match (ty, md.has("hi")) {
            ("u32", false) => Some(|a: u64, b: u64| ((a & 0xff_ffff) * (b & 0xff_ffff)) & 0xffff_ffff),
            ("s32", false) => Some(|a: u64, b: u64| {
                let x = sext::<24>(a & 0xff_ffff) as i64;
                let y = sext::<24>(b & 0xff_ffff) as i64;
                (x.wrapping_mul(y) as u64) & 0xffff_ffff
            }),
            _ => None,
        },
        "div" => by_int!(ty, div),
        "rem" => by_int!(ty, rem),
        "min" => by_int!(ty, min),
        "max" => by_int!(ty, max),
        "and" => Some(and),
        "or" => Some(or),
        "xor" => Some(xor),
        "shl" => Some(match bits {
            16 => shl::<16>,
            32 => shl::<32>,
            64 => shl::<64>,
            _ => return None,
        }),
        "shr" => {
            if ty.starts_with('s') {
                by_int!(ty, shr_s)
            } else {
                Some(match bits {
                    16 => shr_u::<16>,
                    32 => shr_u::<32>,
                    64 => shr_u::<64>,
                    _ => return None,
                })
            }
        }
        _ => None,
    }
}

fn tern_fn(md: &Mods, ty: &str) -> Option<F3> {
    use ops::*;
    if is_float(ty) {
        let sat = md.has("sat");
        let f: F3 = match (ty, sat) {
            ("f32", false) => ffma32,
            ("f32", true) => |a, b, c| gsat::<f32>(ffma32(a, b, c)),
            ("f64", _) => ffma64,
            ("f16", _) => gfma::<f16>,
            ("bf16", _) => gfma::<bf16>,
            ("f16x2", _) => x2_fma::<false>,
            ("bf16x2", _) => x2_fma::<true>,
            _ => return None,
        };
        return matches!(md.base, "mad" | "fma").then_some(f);
    }
    match md.base {
        "mad" if md.has("hi") => by_int!(ty, madhi),
        "mad" if md.has("wide") => {
            if type_size(ty)? > 4 {
                return None;
            }
            by_int!(ty, madwide)
        }
        "mad" if md.has("sat") => {
            let f: F3 = |a, b, c| {
                let p = (a as u32 as i32 as i64) * (b as u32 as i32 as i64);
                p.wrapping_add(c as u32 as i32 as i64).clamp(i32::MIN as i64, i32::MAX as i64) as i32 as u32 as u64
            };
            (ty == "s32").then_some(f)
        }
        "mad" => by_int!(ty, madlo),
        "mad24" => match ty {
            "u32" => Some(|a: u64, b: u64, c: u64| (((a & 0xff_ffff) * (b & 0xff_ffff)).wrapping_add(c)) & 0xffff_ffff),
            "s32" => Some(|a: u64, b: u64, c: u64| {
                let x = sext::<24>(a & 0xff_ffff) as i64;
                let y = sext::<24>(b & 0xff_ffff) as i64;
                (x.wrapping_mul(y).wrapping_add(c as i64) as u64) & 0xffff_ffff
            }),
            _ => None,
        },
        "bfe" => match ty {
            "u32" | "b32" => Some(bfe::<u32> as F3),
            "s32" => Some(bfe::<i32> as F3),
            "u64" | "b64" => Some(bfe::<u64> as F3),
            "s64" => Some(bfe::<i64> as F3),
            _ => None,
        },
        "prmt" if md.has("f4e") => Some(prmt_mode::<0>),
        "prmt" if md.has("b4e") => Some(prmt_mode::<1>),
        "prmt" if md.has("rc8") => Some(prmt_mode::<2>),
        "prmt" if md.has("ecl") => Some(prmt_mode::<3>),
        "prmt" if md.has("ecr") => Some(prmt_mode::<4>),
        "prmt" if md.has("rc16") => Some(prmt_mode::<5>),
        "prmt" => Some(prmt),
        "shf" => {
            let f: F3 = match (md.has("l"), md.has("clamp")) {
                (true, false) => |a, b, c| (((b << 32) | (a & 0xffff_ffff)) << (c & 31)) >> 32 & 0xffff_ffff,
                (true, true) => |a, b, c| {
                    let n = (c as u32).min(32);
                    (((b << 32) | (a & 0xffff_ffff)) << n >> 32) & 0xffff_ffff
                },
                (false, false) => |a, b, c| (((b << 32) | (a & 0xffff_ffff)) >> (c & 31)) & 0xffff_ffff,
                (false, true) => |a, b, c| {
                    let n = (c as u32).min(32);
                    (((b << 32) | (a & 0xffff_ffff)) >> n) & 0xffff_ffff
                },
            };
            Some(f)
        }
        _ => None,
    }
}

fn un_fn(md: &Mods, ty: &str) -> Option<F1> {
    use ops::*;
    let bits = type_size(ty)? * 8;
    if is_float(ty) {
        let approx = md.has("approx");
        let f: F1 = match (md.base, ty) {
            ("neg", "f32") => gneg::<f32>,
            ("neg", "f64") => gneg::<f64>,
            ("neg", "f16") | ("neg", "bf16") => gneg::<f16>,
            ("neg", _) => x2_neg,
            ("abs", "f32") => gabs::<f32>,
            ("abs", "f64") => gabs::<f64>,
            ("abs", "f16") | ("abs", "bf16") => gabs::<f16>,
            ("abs", _) => x2_abs,
            ("sqrt", "f32") => sqrt32,
            ("sqrt", "f64") => sqrt64,
            ("rcp", "f32") => rcp32,
            ("rcp", "f64") if approx => rcp64_approx,
            ("rcp", "f64") => rcp64,
            ("rsqrt", "f32") => rsqrt32,
            ("rsqrt", "f64") => rsqrt64,
            ("sin", "f32") => sin32,
            ("cos", "f32") => cos32,
            ("ex2", "f32") => ex2_32,
            ("lg2", "f32") => lg2_32,
            ("tanh", "f32") => tanh32,
            ("sin", "f64") => sin64,
            ("cos", "f64") => cos64,
            ("ex2", "f64") => ex2_64,
            ("lg2", "f64") => lg2_64,
            ("tanh", "f64") => tanh64,
            ("sqrt", "f16") => gsqrt::<f16>,
            ("rcp", "f16") => grcp::<f16>,
            ("rsqrt", "f16") => grsqrt::<f16>,
            ("sin", "f16") => gsin::<f16>,
            ("cos", "f16") => gcos::<f16>,
            ("ex2", "f16") => gex2::<f16>,
            ("lg2", "f16") => glg2::<f16>,
            ("tanh", "f16") => gtanh::<f16>,
            ("ex2", "bf16") => gex2::<bf16>,
            ("tanh", "bf16") => gtanh::<bf16>,
            _ => return None,
        };
        return Some(f);
    }
    match md.base {
        "not" => Some(match bits {
            8 => not::<8>,
            16 => not::<16>,
            32 => not::<32>,
            _ => not::<64>,
        }),
        "cnot" => Some(cnot),
        "neg" => by_int!(ty, neg),
        "abs" => by_int!(ty, abs),
        "popc" => Some(popc),
        "clz" => Some(if bits == 64 { clz::<64> } else { clz::<32> }),
        "brev" => Some(if bits == 64 { brev::<64> } else { brev::<32> }),
        "bfind" => {
            if md.has("shiftamt") {
                return None;
            }
            by_int!(ty, bfind)
        }
        _ => None,
    }
}

fn cmp_fn(cmp: &str, ty: &str) -> Option<ops::Cmp> {
    use ops::*;
    macro_rules! fl {
        ($f:ident) => {
            match ty {
                "f32" => Some($f::<f32> as Cmp),
                "f64" => Some($f::<f64> as Cmp),
                "f16" => Some($f::<f16> as Cmp),
                "bf16" => Some($f::<bf16> as Cmp),
                _ => None,
            }
        };
    }
    if is_float(ty) {
        return match cmp {
            "eq" => fl!(feq),
            "ne" => fl!(fne),
            "lt" => fl!(flt),
            "le" => fl!(fle),
            "gt" => fl!(fgt),
            "ge" => fl!(fge),
            "equ" => fl!(fequ),
            "neu" => fl!(fneu),
            "ltu" => fl!(fltu),
            "leu" => fl!(fleu),
            "gtu" => fl!(fgtu),
            "geu" => fl!(fgeu),
            "num" => fl!(fnum),
            "nan" => fl!(fnan),
            _ => None,
        };
    }
    let uty = match ty {
        "s8" | "b8" => "u8",
        "s16" | "b16" => "u16",
        "s32" | "b32" => "u32",
        "s64" | "b64" => "u64",
        t => t,
    };
    let bits = type_size(ty)?;
    match cmp {
        "eq" => Some(match bits {
            1 => |a: u64, b: u64| a as u8 == b as u8,
            2 => |a: u64, b: u64| a as u16 == b as u16,
            4 => |a: u64, b: u64| a as u32 == b as u32,
            _ => ieq,
        }),
        "ne" => Some(match bits {
            1 => |a: u64, b: u64| a as u8 != b as u8,
            2 => |a: u64, b: u64| a as u16 != b as u16,
            4 => |a: u64, b: u64| a as u32 != b as u32,
            _ => ine,
        }),
        "lt" => by_int!(ty, ilt),
        "le" => by_int!(ty, ile),
        "gt" => by_int!(ty, igt),
        "ge" => by_int!(ty, ige),
        "lo" => by_int!(uty, ilt),
        "ls" => by_int!(uty, ile),
        "hi" => by_int!(uty, igt),
        "hs" => by_int!(uty, ige),
        _ => None,
    }
}

fn atom_fn(md: &Mods, ty: &str) -> Option<F3> {
    use ops::*;
    let op =
        md.all.iter().copied().find(|m| matches!(*m, "add" | "min" | "max" | "inc" | "dec" | "exch" | "cas" | "and" | "or" | "xor"))?;
    let f: F3 = match (op, ty) {
        ("add", "f32") => |o, b, _| fadd32(o, b),
        ("add", "f64") => |o, b, _| fadd64(o, b),
        ("add", "f16") => |o, b, _| gadd::<f16>(o, b),
        ("add", "bf16") => |o, b, _| gadd::<bf16>(o, b),
        ("add", "f16x2") => |o, b, _| x2_2::<0>(o, b),
        ("add", "u32") | ("add", "s32") => |o, b, _| add::<u32>(o, b),
        ("add", "u64") | ("add", "s64") => |o, b, _| add::<u64>(o, b),
        ("min", "u32") => |o, b, _| min::<u32>(o, b),
        ("min", "s32") => |o, b, _| min::<i32>(o, b),
        ("min", "u64") => |o, b, _| min::<u64>(o, b),
        ("min", "s64") => |o, b, _| min::<i64>(o, b),
        ("max", "u32") => |o, b, _| max::<u32>(o, b),
        ("max", "s32") => |o, b, _| max::<i32>(o, b),
        ("max", "u64") => |o, b, _| max::<u64>(o, b),
        ("max", "s64") => |o, b, _| max::<i64>(o, b),
        ("min", "f32") => |o, b, _| gmin::<f32>(o, b),
        ("max", "f32") => |o, b, _| gmax::<f32>(o, b),
        ("inc", "u32") => |o, b, _| if (o as u32) >= (b as u32) { 0 } else { o + 1 },
        ("dec", "u32") => |o, b, _| {
            if o == 0 || (o as u32) > (b as u32) {
                b
            } else {
                o - 1
            }
        },
        ("exch", _) => |_, b, _| b,
        ("cas", _) => |o, b, c| if o == b { c } else { o },
        ("and", _) => |o, b, _| o & b,
        ("or", _) => |o, b, _| o | b,
        ("xor", _) => |o, b, _| o ^ b,
        _ => return None,
    };
    if matches!(op, "exch" | "cas" | "and" | "or" | "xor")
        && !matches!(ty, "b32" | "b64" | "u32" | "u64" | "s32" | "s64" | "f32" | "f64" | "b16" | "u16")
    {
        return None;
    }
    Some(f)
}

/// Tags of the most frequent two-operand operations, which the interpreter runs inlined
/// over the lanes instead of calling through the function pointer.
pub mod hot {
    pub const ADD32: u8 = 1;
    pub const ADD64: u8 = 2;
    pub const MUL32: u8 = 3;
    pub const MULWIDE_S32: u8 = 4;
    pub const SHL32: u8 = 5;
    pub const SHL64: u8 = 6;
    pub const AND: u8 = 7;
    pub const FADD32: u8 = 8;
    pub const FMUL32: u8 = 9;
    pub const MULWIDE_U32: u8 = 10;
    pub const SUB32: u8 = 11;
    pub const OR: u8 = 12;
    pub const FFMA32: u8 = 1;
    pub const MAD32: u8 = 2;
}

// Comparing function addresses is only used to recognise a few functions: a miss just means
// the generic path runs, and a hit is the very function.
#[allow(unpredictable_function_pointer_comparisons)]
fn hot_bin(f: F2) -> u8 {
    use ops::*;
    let table: [(F2, u8); 14] = [
        (add::<u32>, hot::ADD32),
        (add::<i32>, hot::ADD32),
        (add::<u64>, hot::ADD64),
        (add::<i64>, hot::ADD64),
        (mullo::<u32>, hot::MUL32),
        (mullo::<i32>, hot::MUL32),
        (mulwide::<i32>, hot::MULWIDE_S32),
        (mulwide::<u32>, hot::MULWIDE_U32),
        (shl::<32>, hot::SHL32),
        (shl::<64>, hot::SHL64),
        (and, hot::AND),
        (or, hot::OR),
        (fadd32, hot::FADD32),
        (fmul32, hot::FMUL32),
    ];
    for (g, k) in table {
        if f == g {
            return k;
        }
    }
    if f == sub::<u32> as F2 || f == sub::<i32> as F2 {
        return hot::SUB32;
    }
    0
}

#[allow(unpredictable_function_pointer_comparisons)]
fn hot_tern(f: F3) -> u8 {
    use ops::*;
    if f == ffma32 as F3 {
        hot::FFMA32
    } else if f == madlo::<u32> as F3 || f == madlo::<i32> as F3 {
        hot::MAD32
    } else {
        0
    }
}
