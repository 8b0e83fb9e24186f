//! Which name a connection is for, from its first bytes: the server name
//! of a TLS ClientHello, or the Host of an HTTP request. The proxy reads
//! until one of these says something, then forwards those bytes as they
//! came.

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// Not yet enough bytes to tell.
    More,
    /// The name asked for, lower case and without a port.
    Name(String),
    /// Not what the port is for, or without a name: refused.
    Nameless,
}

/// Bytes read at most before giving up on a name.
pub const MAX_PEEK: usize = 16 << 10;

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

/// The server name (SNI) of the TLS ClientHello `b` begins with.
pub fn tls(b: &[u8]) -> Peeked {
    // A record: handshake (22), version, length; the hello may take
    // several records, but the server name comes early in the first one.
    let (Some(&kind), Some(record)) = (b.first(), be16(b, 3)) else {
        return Peeked::More;
    };
    if kind != 22 {
        return Peeked::Nameless;
    }
    let body = &b[5.min(b.len())..];
    let body = &body[..record.min(body.len())];
    match hello_name(body) {
        Some(Some(name)) => Peeked::Name(name),
        Some(None) => Peeked::Nameless,
        None if body.len() < record => Peeked::More,
        None => Peeked::Nameless,
    }
}

/// `None`: cut short; `Some(None)`: a whole hello without a server name.
fn hello_name(h: &[u8]) -> Option<Option<String>> {
    // Handshake type 1 (ClientHello), 3 bytes of length, version, random.
    if *h.first()? != 1 {
        return Some(None);
    }
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(*h.get(at)?); // session id
    at += 2 + be16(h, at)?; // cipher suites
    at += 1 + usize::from(*h.get(at)?); // compression methods
    let end = at + 2 + be16(h, at)?;
    at += 2;
    while at + 4 <= end {
        let (kind, len) = (be16(h, at)?, be16(h, at + 2)?);
        at += 4;
        if kind == 0 {
            // server_name: list length, then entries of type (0: a host
            // name), length, name.
            let entry = h.get(at + 2..at + len)?;
            if entry.first() != Some(&0) {
                return Some(None);
            }
            let name_len = be16(entry, 1)?;
            let name = entry.get(3..3 + name_len)?;
            return Some(
                std::str::from_utf8(name)
                    .ok()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase()),
            );
        }
        at += len;
    }
    if at > h.len() { None } else { Some(None) }
}

/// The Host of the HTTP/1 request `b` begins with.
pub fn http(b: &[u8]) -> Peeked {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if b.len() < MAX_PEEK {
            Peeked::More
        } else {
            Peeked::Nameless
        };
    };
    let Ok(head) = std::str::from_utf8(&b[..end]) else {
        return Peeked::Nameless;
    };
    let host = head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("host")
            .then(|| value.trim())
    });
    match host.map(strip_port) {
        Some(h) if !h.is_empty() => Peeked::Name(h.trim_end_matches('.').to_ascii_lowercase()),
        _ => Peeked::Nameless,
    }
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or_default();
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A ClientHello record for `name` (none if empty), with an extension
    /// before the server name as real clients send.
    pub fn hello(name: &str) -> Vec<u8> {
        let mut ext = vec![0x00, 0x17, 0, 0]; // extended master secret, empty
        if !name.is_empty() {
            let n = name.len();
            ext.extend([0, 0]);
            ext.extend(((n + 5) as u16).to_be_bytes());
            ext.extend(((n + 3) as u16).to_be_bytes());
            ext.push(0);
            ext.extend((n as u16).to_be_bytes());
            ext.extend(name.as_bytes());
        }
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.extend([32]);
        body.extend([9u8; 32]); // session id
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend([1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn reads_the_server_name_of_a_hello_cut_anywhere() {
        let whole = hello("API.GitHub.com");
        assert_eq!(tls(&whole), Peeked::Name("api.github.com".into()));
        for cut in 0..whole.len() {
            assert_eq!(tls(&whole[..cut]), Peeked::More, "cut at {cut}");
        }
        assert_eq!(tls(&hello("")), Peeked::Nameless);
        assert_eq!(tls(b"GET / HTTP/1.1\r\n"), Peeked::Nameless);
        // The hello's length field lies beyond its record: not a hello.
        let mut bad = hello("a.com");
        bad[4] -= 10;
        assert_eq!(tls(&bad), Peeked::Nameless);
    }

    #[test]
    fn reads_the_host_of_a_request() {
        let req = b"GET /x HTTP/1.1\r\nUser-Agent: curl\r\nhost: Example.COM:8080\r\n\r\n";
        assert_eq!(http(req), Peeked::Name("example.com".into()));
        assert_eq!(http(&req[..req.len() - 1]), Peeked::More);
        let v6 = b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n";
        assert_eq!(http(v6), Peeked::Name("::1".into()));
        assert_eq!(http(b"GET / HTTP/1.0\r\n\r\n"), Peeked::Nameless);
        assert_eq!(http(&vec![b'a'; MAX_PEEK]), Peeked::Nameless);
    }
}
