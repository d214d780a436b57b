//! Flow steering: which worker owns an inner flow. PURE.
//!
//! # The mechanism
//! A flow must stay on one worker at each end (or TCP sees reordering), and different flows must
//! spread over the workers at *both* ends. Two kernel facts decide how:
//!
//! * **TUN to UDP.** The TUN device picks the queue a packet is read from with its automq flow
//!   table, which is *learned from writes*: the queue on which userspace last wrote a flow is the
//!   queue the kernel hands that flow's next packets to. On a miss it hashes the flow.
//! * **UDP to TUN.** Every worker's socket is bound to the same port with `SO_REUSEPORT`. The
//!   default reuseport hash of the outer 4-tuple would put all flows on one socket (without outer
//!   entropy every datagram between two relays has one 4-tuple), and with entropy it would not
//!   follow the worker the TUN's flow table chose. Instead we attach a classic BPF program to the
//!   reuseport group
//!   (`SO_ATTACH_REUSEPORT_CBPF`). For UDP it runs with the packet pointer at the UDP payload, which
//!   is the inner IP header, and returns the index of the socket to deliver to.
//!
//! The program computes [`flow_index`]: a *symmetric* hash of the inner addresses and, for
//! unfragmented TCP and UDP, ports (XOR makes A->B and B->A equal), spread by a multiplicative hash
//! and reduced modulo the number of workers. So on the receiving relay a flow always lands on
//! worker `k`, which writes it to TUN queue `k`; the kernel learns that, and reads the flow's
//! return traffic from queue `k` too, so worker `k` owns both directions. The sending relay
//! converges the same way as soon as the first reply arrives. No eBPF loader, no maps, no shared
//! state: one 40-instruction filter set once at startup.
//!
//! IPv4 fragments hash on addresses only, so every fragment of a datagram goes to the same worker.
//! Anything that is not IPv4 or IPv6 goes to worker 0, which drops and counts it.
//!
//! Both read fields by their names in `wire::ip::field` and `wire::transport::field`, but not
//! through the `wire` parsers: the program sees every datagram before validation, so
//! [`flow_key`] must answer as it does for any bytes at all (an IHL below 5 included), with no
//! rule the program does not have.

use libc::{
    BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JA, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
    BPF_LD, BPF_LDX, BPF_MEM, BPF_MISC, BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST,
    BPF_TAX, BPF_W, BPF_X, BPF_XOR, sock_filter,
};

use crate::wire::ip::field::{
    V4_DST, V4_FRAGMENT, V4_PROTOCOL, V4_SRC, V4_VERSION_IHL, V6_NEXT_HEADER, V6_SRC,
};
use crate::wire::ip::{IPV4_FRAGMENT_MASK, IPV6_HEADER_LEN};
use crate::wire::transport::field::{DST_PORT, SRC_PORT};
use crate::wire::transport::{PROTO_TCP, PROTO_UDP};

/// Fibonacci hashing multiplier, 2^32 / golden ratio: spreads close keys apart.
const GOLDEN: u32 = 0x9E37_79B1;
/// The IPv6 source and destination addresses, as eight 32-bit words from [`V6_SRC`] on.
const V6_ADDRESS_WORDS: usize = 8;

/// The worker (0..workers) that owns the flow of this inner IP packet.
///
/// This is the reference for [`reuseport_program`]: both give the same answer for every byte
/// string, including those too short for the fields they read (which give 0, as cBPF's
/// out-of-bounds load does).
pub fn flow_index(packet: &[u8], workers: u32) -> u32 {
    match flow_key(packet) {
        Some(key) => (key.wrapping_mul(GOLDEN) >> 16) % workers.max(1),
        None => 0,
    }
}

fn be16(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        p.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

/// The symmetric flow key `flow_index` reduces: packets with equal keys go to the same worker
/// whatever the worker count. `None` for anything that is not IPv4 or IPv6.
pub fn flow_key(p: &[u8]) -> Option<u32> {
    match p.first()? >> 4 {
        4 => {
            let mut key = be32(p, V4_SRC.start)? ^ be32(p, V4_DST.start)?;
            let protocol = *p.get(V4_PROTOCOL)?;
            if (protocol == PROTO_TCP || protocol == PROTO_UDP)
                && be16(p, V4_FRAGMENT.start)? & u32::from(IPV4_FRAGMENT_MASK) == 0
            {
                // IHL * 4 as `BPF_MSH` takes it: unchecked, so below 20 too.
                let header_len = usize::from(p[V4_VERSION_IHL] & 0x0f) * 4;
                key ^=
                    be16(p, header_len + SRC_PORT.start)? ^ be16(p, header_len + DST_PORT.start)?;
            }
            Some(key)
        }
        6 => {
            let mut key = 0;
            for word in 0..V6_ADDRESS_WORDS {
                key ^= be32(p, V6_SRC.start + 4 * word)?;
            }
            let next_header = *p.get(V6_NEXT_HEADER)?;
            if next_header == PROTO_TCP || next_header == PROTO_UDP {
                // The next header only: behind an extension header, no ports.
                key ^= be16(p, IPV6_HEADER_LEN + SRC_PORT.start)?
                    ^ be16(p, IPV6_HEADER_LEN + DST_PORT.start)?;
            }
            Some(key)
        }
        _ => None,
    }
}

/// A tiny assembler: forward jumps to labels, resolved into cBPF's relative offsets.
#[derive(Clone, Copy)]
enum Insn {
    Stmt(u32, u32),
    Jump {
        code: u32,
        k: u32,
        on_true: Label,
        on_false: Label,
    },
    Always(Label),
    Mark(Label),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
    V4,
    V6,
    V4Ports,
    V4PortsGo,
    V6Ports,
    Done,
    Drop,
}

/// The classic BPF program for `SO_ATTACH_REUSEPORT_CBPF` that returns [`flow_index`].
pub fn reuseport_program(workers: u32) -> Vec<sock_filter> {
    use Insn::*;
    use Label::*;
    let workers = workers.max(1);
    let k = |at: usize| u32::try_from(at).expect("a header offset");
    let ld = |size: u32, at: usize| Stmt(BPF_LD | size | BPF_ABS, k(at));
    let xor_x = Stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
    let tax = Stmt(BPF_MISC | BPF_TAX, 0);
    let is_port_protocol = |then: Label, otherwise: Label| {
        [
            Jump {
                code: BPF_JMP | BPF_JEQ | BPF_K,
                k: u32::from(PROTO_TCP),
                on_true: then,
                on_false: Next,
            },
            Jump {
                code: BPF_JMP | BPF_JEQ | BPF_K,
                k: u32::from(PROTO_UDP),
                on_true: then,
                on_false: otherwise,
            },
        ]
    };
    let mut program = vec![
        ld(BPF_B, V4_VERSION_IHL),
        Stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        Jump {
            code: BPF_JMP | BPF_JEQ | BPF_K,
            k: 4,
            on_true: V4,
            on_false: Next,
        },
        Jump {
            code: BPF_JMP | BPF_JEQ | BPF_K,
            k: 6,
            on_true: V6,
            on_false: Drop,
        },
        // IPv4: M[0] = src ^ dst.
        Mark(V4),
        ld(BPF_W, V4_SRC.start),
        tax,
        ld(BPF_W, V4_DST.start),
        xor_x,
        Stmt(BPF_ST, 0),
        ld(BPF_B, V4_PROTOCOL),
    ];
    program.extend(is_port_protocol(V4Ports, Done));
    program.extend([
        Mark(V4Ports),
        ld(BPF_H, V4_FRAGMENT.start),
        Jump {
            code: BPF_JMP | BPF_JSET | BPF_K,
            k: u32::from(IPV4_FRAGMENT_MASK),
            on_true: Done,
            on_false: V4PortsGo,
        },
        Mark(V4PortsGo),
        // X = IHL * 4; M[0] ^= sport ^ dport.
        Stmt(BPF_LDX | BPF_B | BPF_MSH, k(V4_VERSION_IHL)),
        Stmt(BPF_LD | BPF_H | BPF_IND, k(SRC_PORT.start)),
        Stmt(BPF_ST, 1),
        Stmt(BPF_LD | BPF_H | BPF_IND, k(DST_PORT.start)),
        Stmt(BPF_LDX | BPF_W | BPF_MEM, 1),
        xor_x,
        Stmt(BPF_LDX | BPF_W | BPF_MEM, 0),
        xor_x,
        Stmt(BPF_ST, 0),
        Always(Done),
        // IPv6: M[0] = xor of the eight address words.
        Mark(V6),
        ld(BPF_W, V6_SRC.start),
    ]);
    for word in 1..V6_ADDRESS_WORDS {
        program.extend([tax, ld(BPF_W, V6_SRC.start + 4 * word), xor_x]);
    }
    program.extend([Stmt(BPF_ST, 0), ld(BPF_B, V6_NEXT_HEADER)]);
    program.extend(is_port_protocol(V6Ports, Done));
    program.extend([
        Mark(V6Ports),
        ld(BPF_H, IPV6_HEADER_LEN + SRC_PORT.start),
        tax,
        ld(BPF_H, IPV6_HEADER_LEN + DST_PORT.start),
        xor_x,
        Stmt(BPF_LDX | BPF_W | BPF_MEM, 0),
        xor_x,
        Stmt(BPF_ST, 0),
        Mark(Done),
        Stmt(BPF_LD | BPF_W | BPF_MEM, 0),
        Stmt(BPF_ALU | BPF_MUL | BPF_K, GOLDEN),
        Stmt(BPF_ALU | BPF_RSH | BPF_K, 16),
        Stmt(BPF_ALU | BPF_MOD | BPF_K, workers),
        Stmt(BPF_RET | BPF_A, 0),
        Mark(Drop),
        Stmt(BPF_RET | BPF_K, 0),
    ]);
    assemble(&program)
}

fn assemble(program: &[Insn]) -> Vec<sock_filter> {
    // Pass 1: the instruction index each label marks.
    let mut marks: Vec<(Label, usize)> = Vec::new();
    let mut pc = 0;
    for insn in program {
        match insn {
            Insn::Mark(label) => marks.push((*label, pc)),
            _ => pc += 1,
        }
    }
    let target = |label: Label, pc: usize| -> usize {
        if label == Label::Next {
            return 0;
        }
        let at = marks
            .iter()
            .find(|(l, _)| *l == label)
            .expect("label is marked")
            .1;
        at.checked_sub(pc + 1).expect("cBPF jumps only forward")
    };
    // Pass 2: emit with relative offsets.
    let mut out = Vec::with_capacity(pc);
    for insn in program {
        let pc = out.len();
        let filter = match *insn {
            Insn::Mark(_) => continue,
            Insn::Stmt(code, k) => sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            },
            Insn::Jump {
                code,
                k,
                on_true,
                on_false,
            } => sock_filter {
                code: code as u16,
                jt: u8::try_from(target(on_true, pc)).expect("short jump"),
                jf: u8::try_from(target(on_false, pc)).expect("short jump"),
                k,
            },
            Insn::Always(label) => sock_filter {
                code: (BPF_JMP | BPF_JA) as u16,
                jt: 0,
                jf: 0,
                k: target(label, pc) as u32,
            },
        };
        out.push(filter);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunfwd_testkit::cbpf::run;

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn program_matches_reference_on_random_and_mutated_packets() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for workers in [1u32, 2, 3, 4, 8, 256] {
            let program = reuseport_program(workers);
            assert!(program.len() < 100);
            for round in 0..5000 {
                let mut p = match round % 4 {
                    0 => tcp4([198, 19, 0, 1], [198, 19, 0, 2], next() as u16, 5201),
                    1 => {
                        let mut v6 = vec![0u8; 48];
                        v6[0] = 0x60;
                        v6[6] = if next() % 2 == 0 { PROTO_UDP } else { 58 };
                        v6
                    }
                    _ => (0..(next() % 70) as usize).map(|_| next() as u8).collect(),
                };
                for _ in 0..(next() % 4) {
                    if !p.is_empty() {
                        let at = next() as usize % p.len();
                        p[at] = next() as u8;
                    }
                }
                if round % 4 == 2 && !p.is_empty() {
                    p[0] = if next() % 2 == 0 { 0x45 } else { 0x60 } | (p[0] & 0x0f);
                }
                let expected = flow_index(&p, workers);
                assert!(expected < workers);
                assert_eq!(
                    run(&program, &p),
                    expected,
                    "workers {workers}, packet {p:02x?}"
                );
            }
        }
    }

    #[test]
    fn both_directions_of_a_flow_pick_the_same_worker() {
        for sport in 40000..40100u16 {
            let there = tcp4([198, 19, 0, 1], [198, 19, 0, 2], sport, 5201);
            let back = tcp4([198, 19, 0, 2], [198, 19, 0, 1], 5201, sport);
            assert_eq!(flow_index(&there, 4), flow_index(&back, 4));
        }
    }

    #[test]
    fn different_flows_spread_over_workers() {
        let mut per_worker = [0u32; 4];
        for sport in 40000..40064u16 {
            per_worker
                [flow_index(&tcp4([198, 19, 0, 1], [198, 19, 0, 2], sport, 5201), 4) as usize] += 1;
        }
        // 64 flows over 4 workers: every worker gets a share, none gets most.
        assert!(
            per_worker.iter().all(|&n| (4..=32).contains(&n)),
            "{per_worker:?}"
        );
    }

    #[test]
    fn fragments_and_garbage_use_addresses_or_worker_zero() {
        let mut frag = tcp4([198, 19, 0, 1], [198, 19, 0, 2], 1, 2);
        frag[6] = 0x20;
        let mut other_ports = frag.clone();
        other_ports[20] = 0x77;
        assert_eq!(flow_index(&frag, 8), flow_index(&other_ports, 8));
        assert_eq!(flow_index(&[0x10, 0, 0], 8), 0);
        assert_eq!(flow_index(&[], 8), 0);
    }
}
