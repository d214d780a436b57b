//! A classic BPF interpreter for the instructions tunfwd's reuseport steering program uses
//! (`steer::reuseport_program`): the second, independent half of the check that the program
//! computes `steer::flow_index`. The kernel runs the program at run time; `steer`'s unit tests
//! and the `steer_cbpf` fuzz target run it here, over the same bytes, and compare.

use libc::{
    BPF_A, BPF_ABS, BPF_ALU, BPF_H, BPF_IND, BPF_JA, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_LD, BPF_LDX,
    BPF_MEM, BPF_MISC, BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST, BPF_W, BPF_X, BPF_XOR,
    sock_filter,
};

/// Runs `program` over `packet` and returns its result. Follows the kernel's rules for classic
/// socket filters (net/core/filter.c, `bpf_convert_filter`): a load past the end of the packet
/// ends the program returning 0, and so does a modulo by zero. Panics on an instruction
/// tunfwd's `steer::reuseport_program` does not use, or on a shift the kernel refuses at attach
/// time (`bpf_check_classic`): it runs tunfwd's own program, never an untrusted one.
pub fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    let load = |at: usize, size: usize| -> Option<u32> {
        let b = packet.get(at..at.checked_add(size)?)?;
        Some(
            b.iter()
                .fold(0u32, |acc, byte| (acc << 8) | u32::from(*byte)),
        )
    };
    loop {
        let f = program[pc];
        let code = u32::from(f.code);
        pc += 1;
        let size = |code: u32| match code & 0x18 {
            BPF_W => 4,
            BPF_H => 2,
            _ => 1,
        };
        match code & 0x07 {
            BPF_LD => match code & 0xe0 {
                BPF_ABS => match load(f.k as usize, size(code)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                BPF_IND => match load(x.wrapping_add(f.k) as usize, size(code)) {
                    Some(v) => a = v,
                    None => return 0,
                },
                BPF_MEM => a = mem[f.k as usize],
                other => panic!("ld mode {other:#x}"),
            },
            BPF_LDX => match code & 0xe0 {
                BPF_MSH => match load(f.k as usize, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                BPF_MEM => x = mem[f.k as usize],
                other => panic!("ldx mode {other:#x}"),
            },
            BPF_ST => mem[f.k as usize] = a,
            BPF_ALU => {
                let operand = if code & BPF_X != 0 { x } else { f.k };
                a = match code & 0xf0 {
                    BPF_XOR => a ^ operand,
                    BPF_MUL => a.wrapping_mul(operand),
                    BPF_RSH => a >> operand,
                    BPF_MOD => match a.checked_rem(operand) {
                        Some(v) => v,
                        None => return 0,
                    },
                    other => panic!("alu op {other:#x}"),
                }
            }
            BPF_JMP => match code & 0xf0 {
                BPF_JA => pc += f.k as usize,
                BPF_JEQ => pc += usize::from(if a == f.k { f.jt } else { f.jf }),
                BPF_JSET => pc += usize::from(if a & f.k != 0 { f.jt } else { f.jf }),
                other => panic!("jmp op {other:#x}"),
            },
            BPF_RET => return if code & BPF_A != 0 { a } else { f.k },
            BPF_MISC => x = a,
            other => panic!("class {other:#x}"),
        }
    }
}
