//! Checks that every carry chain of our kernels reaches the PTX in one
//! straight line.
//!
//! The kernels write each carry instruction (`add.cc`, `madc.hi.cc`, ...)
//! as its own `asm volatile` statement (kernels/rsa/arith.cuh,
//! kernels/ec/field.cuh), so the carry flag (CC.CF) travels *between* asm
//! statements. The PTX ISA defines the flag only for straight-line code and
//! does not preserve it across calls; the compiler keeps volatile asm in
//! order but is otherwise free to put a branch, a label or its own carry
//! arithmetic between two of them. Any of those would silently corrupt
//! limbs. Signatures are verified before release, so the harm would be a
//! quarantined GPU rather than a wrong answer, but a chain the compiler
//! split is a build error, found here, not on a device.
//!
//! [`check`] reads the PTX NVRTC produced (it comes with every CUBIN) and
//! requires, for every carry-reading instruction of ours (`addc`, `subc`,
//! `madc`): the previous carry instruction is ours, sets the flag (`.cc`),
//! and nothing between the two is a label, a branch, a call or a return.
//! Predicated carry instructions are refused too.

use std::fmt;

/// What [`check`] saw: proof that it looked at something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarryChains {
    /// Chains of ours: carry-setting instructions that read no carry.
    pub chains: usize,
    /// Carry instructions of ours (inline asm), chain starts included.
    pub ops: usize,
}

/// A carry chain that does not reach the PTX in one straight line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenChain {
    /// The function (`.entry` or `.func`) it is in.
    pub function: String,
    /// 1-based line of the carry-reading instruction in the PTX.
    pub line: usize,
    /// The instruction.
    pub instruction: String,
    /// Why its carry is not the one the source meant.
    pub reason: String,
}

impl fmt::Display for BrokenChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "carry chain broken in {} at PTX line {} (`{}`): {}",
            self.function, self.line, self.instruction, self.reason
        )
    }
}

/// The carry instruction last seen in the current straight-line stretch.
#[derive(Clone)]
struct LastCarry {
    line: usize,
    sets_flag: bool,
    ours: bool,
}

/// Why the current straight-line stretch began, when it did not begin with
/// the function.
#[derive(Clone)]
enum Start {
    Function,
    Barrier { line: usize, what: String },
}

/// Checks every carry chain of ours in `ptx`; see the module comment.
///
/// # Errors
///
/// The first chain that is broken, with its function, line and reason.
pub fn check(ptx: &str) -> Result<CarryChains, BrokenChain> {
    let mut seen = CarryChains::default();
    let mut function = String::from("(before any function)");
    let mut in_asm = false;
    let mut last: Option<LastCarry> = None;
    let mut start = Start::Function;

    for (i, raw) in ptx.lines().enumerate() {
        let line_no = i + 1;
        let (code, comment) = match raw.find("//") {
            Some(at) => (&raw[..at], raw[at + 2..].trim()),
            None => (raw, ""),
        };
        match comment {
            "begin inline asm" => in_asm = true,
            "end inline asm" => in_asm = false,
            _ => {}
        }
        let code = code.trim();
        if let Some(name) = function_name(code) {
            function = name;
            last = None;
            start = Start::Function;
            continue;
        }
        for stmt in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(label) = label(stmt) {
                last = None;
                start = Start::Barrier {
                    line: line_no,
                    what: format!("label {label}"),
                };
                continue;
            }
            if stmt.starts_with(['.', '{', '}']) {
                continue;
            }
            let (guarded, insn) = match stmt.strip_prefix('@') {
                Some(rest) => (
                    true,
                    rest.split_once(char::is_whitespace)
                        .map_or("", |(_, i)| i.trim()),
                ),
                None => (false, stmt),
            };
            let opcode = insn.split_whitespace().next().unwrap_or("");
            let mut parts = opcode.split('.');
            let base = parts.next().unwrap_or("");
            if matches!(base, "bra" | "brx" | "call" | "ret" | "exit") {
                last = None;
                start = Start::Barrier {
                    line: line_no,
                    what: format!("`{opcode}`"),
                };
                continue;
            }
            let sets_flag = parts.any(|p| p == "cc");
            let reads_flag = matches!(base, "addc" | "subc" | "madc");
            if !sets_flag && !reads_flag {
                continue;
            }
            let broken = |reason: String| BrokenChain {
                function: function.clone(),
                line: line_no,
                instruction: stmt.to_string(),
                reason,
            };
            if in_asm {
                if guarded {
                    return Err(broken("a carry instruction under a predicate".into()));
                }
                seen.ops += 1;
                if !reads_flag {
                    seen.chains += 1;
                }
            }
            if reads_flag && in_asm {
                match (&last, &start) {
                    (Some(l), _) if !l.ours => {
                        return Err(broken(format!(
                            "the carry comes from the compiler's own instruction at line {}",
                            l.line
                        )));
                    }
                    (Some(l), _) if !l.sets_flag => {
                        return Err(broken(format!(
                            "the instruction before it (line {}) sets no carry",
                            l.line
                        )));
                    }
                    (Some(_), _) => {}
                    (None, Start::Function) => {
                        return Err(broken("no carry is set before it".into()));
                    }
                    (None, Start::Barrier { line, what }) => {
                        return Err(broken(format!(
                            "{what} at line {line} lies between it and the carry it reads"
                        )));
                    }
                }
            }
            last = Some(LastCarry {
                line: line_no,
                sets_flag,
                ours: in_asm,
            });
        }
    }
    Ok(seen)
}

/// `.visible .entry name(` or `.func (.param ...) name(` -> `name`.
fn function_name(code: &str) -> Option<String> {
    let words: Vec<&str> = code.split_whitespace().collect();
    let at = words.iter().position(|w| *w == ".entry" || *w == ".func")?;
    let rest = words[at + 1..].join(" ");
    // A `.func` may declare its return value first: `(.param .b32 r) name(`.
    let rest = if rest.starts_with('(') {
        rest.split_once(')')
            .map_or("", |(_, r)| r)
            .trim()
            .to_string()
    } else {
        rest
    };
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// `$L__BB0_2:` -> `$L__BB0_2`.
fn label(stmt: &str) -> Option<&str> {
    let name = stmt.strip_suffix(':')?;
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$'))
    .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asm(insn: &str) -> String {
        format!("\t// begin inline asm\n\t{insn};\n\t// end inline asm\n")
    }

    fn body(lines: &[String]) -> String {
        format!(
            ".visible .entry k(\n\t.param .u64 k_param_0\n)\n{{\n\t.reg .b32 %r<9>;\n{}\tret;\n}}\n",
            lines.concat()
        )
    }

    #[test]
    fn straight_chains_pass_and_are_counted() {
        let ptx = body(&[
            "\tld.param.u32 %r1, [k_param_0];\n".into(),
            asm("add.cc.u32 %r2, %r1, %r1"),
            "\tmov.u32 %r9, 7;\n".into(),
            asm("addc.cc.u32 %r3, %r1, %r1"),
            asm("addc.u32 %r4, %r1, %r1"),
            asm("mad.lo.cc.u32 %r5, %r1, %r1, %r2"),
            asm("madc.hi.u32 %r6, %r1, %r1, %r3"),
        ]);
        assert_eq!(check(&ptx), Ok(CarryChains { chains: 2, ops: 5 }));
    }

    #[test]
    fn a_label_or_branch_inside_a_chain_is_found() {
        for barrier in ["$L__BB0_1:\n", "\t@%p1 bra $L__BB0_3;\n", "\tcall f;\n"] {
            let ptx = body(&[
                asm("add.cc.u32 %r2, %r1, %r1"),
                barrier.into(),
                asm("addc.u32 %r3, %r1, %r1"),
            ]);
            let e = check(&ptx).unwrap_err();
            assert_eq!(e.function, "k");
            assert!(e.instruction.starts_with("addc.u32"), "{e}");
            assert!(e.reason.contains("lies between"), "{barrier}: {e}");
        }
    }

    #[test]
    fn a_compiler_carry_op_inside_a_chain_is_found() {
        let ptx = body(&[
            asm("add.cc.u32 %r2, %r1, %r1"),
            "\tadd.cc.s64 %rd1, %rd2, %rd3;\n".into(),
            asm("addc.u32 %r3, %r1, %r1"),
        ]);
        let e = check(&ptx).unwrap_err();
        assert!(e.reason.contains("compiler's own"), "{e}");
    }

    #[test]
    fn a_reader_with_no_setter_before_it_is_found() {
        let e = check(&body(&[asm("addc.u32 %r3, %r1, %r1")])).unwrap_err();
        assert!(e.reason.contains("no carry is set"), "{e}");
        let e = check(&body(&[
            asm("add.cc.u32 %r2, %r1, %r1"),
            asm("addc.u32 %r3, %r1, %r1"),
            asm("addc.u32 %r4, %r1, %r1"),
        ]))
        .unwrap_err();
        assert!(e.reason.contains("sets no carry"), "{e}");
        assert!(e.to_string().contains("PTX line"), "{e}");
    }

    #[test]
    fn predicated_carry_ops_are_refused() {
        let e = check(&body(&[asm("@%p1 add.cc.u32 %r2, %r1, %r1")])).unwrap_err();
        assert!(e.reason.contains("predicate"), "{e}");
    }

    #[test]
    fn a_new_function_ends_the_chain_of_the_last() {
        let mut ptx = body(&[asm("add.cc.u32 %r2, %r1, %r1")]);
        ptx = ptx.replace("\tret;\n", "");
        ptx.push_str(".func (.param .b32 r) g(\n)\n{\n");
        ptx.push_str(&asm("addc.u32 %r3, %r1, %r1"));
        let e = check(&ptx).unwrap_err();
        assert_eq!(e.function, "g");
        assert!(e.reason.contains("no carry is set"), "{e}");
    }
}
