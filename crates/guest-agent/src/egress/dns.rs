//! DNS messages, as much as the restricted mode's resolver and proxy need:
//! the one question of a query, a "no such name" answer to it, a query of
//! the proxy's own, and the addresses in an answer. Everything else
//! (EDNS, flags the client set) passes through the upstream resolver
//! untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const HEADER: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const NXDOMAIN: u8 = 3;
/// Names longer than this (RFC 1035, in wire form) are not names.
const MAX_WIRE_NAME: usize = 255;

/// The single question of a query.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    /// Dotted, lower case, no final dot (`""` for the root).
    pub name: String,
    pub qtype: u16,
    /// Where the question ends in the message.
    end: usize,
}

pub(super) fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(msg.get(at..at + 2)?.try_into().ok()?))
}

/// The question of `msg` if it is a standard query with exactly one (what
/// every stub resolver sends); `None` for anything else, which is refused.
pub fn question(msg: &[u8]) -> Option<Question> {
    let flags = u16_at(msg, 2)?;
    let is_query = flags & 0x8000 == 0;
    let opcode = (flags >> 11) & 0xf;
    if !is_query || opcode != 0 || u16_at(msg, 4)? != 1 {
        return None;
    }
    let mut at = HEADER;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A query's question is never compressed; 0x40 and up are pointers
        // or reserved label types.
        if len > 63 || at - HEADER + len > MAX_WIRE_NAME {
            return None;
        }
        let label = std::str::from_utf8(msg.get(at..at + len)?).ok()?;
        labels.push(label.to_ascii_lowercase());
        at += len;
    }
    let qtype = u16_at(msg, at)?;
    u16_at(msg, at + 2)?;
    Some(Question {
        name: labels.join("."),
        qtype,
        end: at + 4,
    })
}

/// The answer "no such name" to `query`, whose question is `q`: its id,
/// its question, no records.
pub fn no_such_name(query: &[u8], q: &Question) -> Vec<u8> {
    let mut out = query[..q.end].to_vec();
    // QR, the query's opcode (0) and RD, RA; the rcode.
    let rd = query[2] & 0x01;
    out[2] = 0x80 | rd;
    out[3] = 0x80 | NXDOMAIN;
    // One question, no answer, authority or additional records.
    out[6..HEADER].fill(0);
    out
}

/// A query for `name`'s records of `qtype`, with recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + name.len() + 6);
    out.extend(id.to_be_bytes());
    out.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
    out.extend(qtype.to_be_bytes());
    out.extend(CLASS_IN.to_be_bytes());
    out
}

/// Where the name at `at` ends (compressed or not).
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            0xc0.. => return Some(at + 2),
            64.. => return None,
            _ => at += 1 + usize::from(len),
        }
    }
}

/// What an answer says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub addrs: Vec<IpAddr>,
    /// Seconds they may be kept: the least time to live of the answer's
    /// records (`u32::MAX` when it has none).
    pub ttl: u32,
}

impl Found {
    pub const NOTHING: Found = Found {
        addrs: Vec::new(),
        ttl: u32::MAX,
    };

    /// Both answers' addresses, kept as long as both may be.
    pub fn and(mut self, other: Found) -> Found {
        self.addrs.extend(other.addrs);
        self.ttl = self.ttl.min(other.ttl);
        self
    }
}

/// The addresses an answer to query `id` gives (its A and AAAA records,
/// whatever name they are for: a resolver puts the CNAME chain of the
/// question before them); nothing for an error or another id.
pub fn addresses(msg: &[u8], id: u16) -> Found {
    let parse = || -> Option<Found> {
        let flags = u16_at(msg, 2)?;
        if u16_at(msg, 0)? != id || flags & 0x8000 == 0 || flags & 0xf != 0 {
            return None;
        }
        let (questions, answers) = (u16_at(msg, 4)?, u16_at(msg, 6)?);
        let mut at = HEADER;
        for _ in 0..questions {
            at = skip_name(msg, at)? + 4;
        }
        let mut found = Vec::new();
        let mut ttl = u32::MAX;
        for _ in 0..answers {
            at = skip_name(msg, at)?;
            let (rtype, class) = (u16_at(msg, at)?, u16_at(msg, at + 2)?);
            let record_ttl =
                u32::from(u16_at(msg, at + 4)?) << 16 | u32::from(u16_at(msg, at + 6)?);
            ttl = ttl.min(record_ttl);
            let len = usize::from(u16_at(msg, at + 8)?);
            let data = msg.get(at + 10..at + 10 + len)?;
            at += 10 + len;
            match (rtype, class, data.len()) {
                (TYPE_A, CLASS_IN, 4) => {
                    let a: [u8; 4] = data.try_into().ok()?;
                    found.push(IpAddr::V4(Ipv4Addr::from(a)));
                }
                (TYPE_AAAA, CLASS_IN, 16) => {
                    let a: [u8; 16] = data.try_into().ok()?;
                    found.push(IpAddr::V6(Ipv6Addr::from(a)));
                }
                _ => {}
            }
        }
        Some(Found { addrs: found, ttl })
    };
    parse().unwrap_or(Found::NOTHING)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as `dig` sends it: EDNS record in the additional section.
    fn dig_query() -> Vec<u8> {
        let mut q = query(0xbeef, "Api.GitHub.com", TYPE_AAAA);
        q[11] = 1;
        q.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        q
    }

    #[test]
    fn reads_the_question_of_a_query() {
        let q = question(&dig_query()).unwrap();
        assert_eq!((q.name.as_str(), q.qtype), ("api.github.com", TYPE_AAAA));
        assert_eq!(q.end, HEADER + 16 + 4);
        // Cut anywhere inside the question: not a query.
        let whole = dig_query();
        for cut in 0..q.end {
            assert_eq!(question(&whole[..cut]), None, "cut at {cut}");
        }
        // An answer, another opcode, two questions, a pointer: refused.
        for (at, value) in [(2, 0x81), (2, 0x28), (5, 2)] {
            let mut m = dig_query();
            m[at] = value;
            assert_eq!(question(&m), None, "byte {at} = {value:#x}");
        }
        let mut m = dig_query();
        m[HEADER] = 0xc0;
        assert_eq!(question(&m), None);
    }

    #[test]
    fn answers_no_such_name_to_the_question_only() {
        let query = dig_query();
        let q = question(&query).unwrap();
        let a = no_such_name(&query, &q);
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[2] & 0x01, 0x01, "recursion desired, as asked");
        assert_eq!(a[3] & 0x0f, NXDOMAIN);
        assert_eq!(&a[4..HEADER], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&a[HEADER..], &query[HEADER..q.end]);
        assert_eq!(addresses(&a, 0xbeef), Found::NOTHING);
    }

    #[test]
    fn finds_the_addresses_of_an_answer() {
        let mut a = query(7, "www.example.com", TYPE_A);
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 3;
        // A CNAME to a name, then its address, then an AAAA; all names
        // compressed to the question's (offset 12).
        a.extend([0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        a.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 192, 0, 2, 7]);
        a.extend([0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        a.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let want: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        // The CNAME's and the AAAA's 60 s beat the A's 300 s.
        assert_eq!(
            addresses(&a, 7),
            Found {
                addrs: want,
                ttl: 60
            }
        );
        assert_eq!(addresses(&a, 8), Found::NOTHING, "another query's answer");
        assert_eq!(addresses(&a[..a.len() - 1], 7), Found::NOTHING, "cut short");
        let mut failed = a.clone();
        failed[3] = 0x82;
        assert_eq!(addresses(&failed, 7), Found::NOTHING, "SERVFAIL");
    }
}
