//! The proxy's memory of the names it looked up, per environment: without
//! it every connection waits for two answers of the guest's resolver
//! before it can be made. An address is kept as long as its records say,
//! at least [`KEEP_AT_LEAST`] and at most [`KEEP_AT_MOST`]; a name that
//! gave none is asked again. Kept apart per environment, so that no
//! environment can tell by timing which names another one uses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dns::Found;

/// The longest an address is kept, whatever its time to live.
pub const KEEP_AT_MOST: Duration = Duration::from_secs(60);
/// The shortest: answers that live zero seconds (the guest's resolver
/// gives its `/etc/hosts` names so, some CDNs theirs) would otherwise cost
/// a lookup per connection. Nothing is lost in safety: every address is
/// checked against the policy at each connection, kept or not.
pub const KEEP_AT_LEAST: Duration = Duration::from_secs(5);
/// Beyond this many names the expired ones go, and if that is not enough,
/// all of them.
const MAX_NAMES: usize = 4096;

/// An environment's name and a name it looked up (in lower case).
type Key = (String, String);

#[derive(Default)]
pub struct Cache {
    /// The addresses of each, and until when they are kept.
    names: Mutex<HashMap<Key, (Instant, Vec<IpAddr>)>>,
}

impl Cache {
    /// The addresses of `name` for environment `env` at `now`: remembered,
    /// or from `resolve` (then remembered).
    pub fn lookup(
        &self,
        env: &str,
        name: &str,
        now: Instant,
        resolve: impl FnOnce(&str) -> Found,
    ) -> Vec<IpAddr> {
        let key = (env.to_owned(), name.to_ascii_lowercase());
        let names = || self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((until, addrs)) = names().get(&key)
            && now < *until
        {
            return addrs.clone();
        }
        // Asked without the lock: the resolver may take seconds.
        let found = resolve(name);
        let keep = Duration::from_secs(found.ttl.into()).clamp(KEEP_AT_LEAST, KEEP_AT_MOST);
        if !found.addrs.is_empty() {
            let mut names = names();
            if names.len() >= MAX_NAMES {
                names.retain(|_, (until, _)| now < *until);
                if names.len() >= MAX_NAMES {
                    names.clear();
                }
            }
            names.insert(key, (now + keep, found.addrs.clone()));
        }
        found.addrs
    }

    /// Whether `addr` is, at `now`, a kept address of a name environment
    /// `env` looked up and that `allowed` still lets it reach.
    pub fn holds(
        &self,
        env: &str,
        addr: IpAddr,
        now: Instant,
        allowed: impl Fn(&str) -> bool,
    ) -> bool {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.iter().any(|((e, name), (until, addrs))| {
            e == env && now < *until && addrs.contains(&addr) && allowed(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn keeps_addresses_as_long_as_they_live_and_apart_per_environment() {
        let cache = Cache::default();
        let asked = Cell::new(0);
        let t0 = Instant::now();
        let lookup = |env: &str, name: &str, at: u64, ttl: u32| {
            cache.lookup(env, name, t0 + Duration::from_secs(at), |_| {
                asked.set(asked.get() + 1);
                Found {
                    addrs: vec![IpAddr::from([192, 0, 2, asked.get()])],
                    ttl,
                }
            })
        };
        let first = lookup("a", "www.example.com", 0, 30);
        assert_eq!(lookup("a", "WWW.example.com", 29, 30), first);
        assert_eq!(asked.get(), 1);
        assert_ne!(lookup("a", "www.example.com", 30, 30), first, "expired");
        assert_eq!(asked.get(), 2);
        lookup("b", "www.example.com", 31, 30);
        assert_eq!(asked.get(), 3, "another environment asks for itself");
        // A day's time to live is kept a minute; zero, five seconds.
        lookup("a", "long.example.com", 0, 86400);
        lookup("a", "long.example.com", 59, 86400);
        assert_eq!(asked.get(), 4);
        lookup("a", "long.example.com", 60, 86400);
        assert_eq!(asked.get(), 5);
        lookup("a", "zero.example.com", 0, 0);
        lookup("a", "zero.example.com", 4, 0);
        assert_eq!(asked.get(), 6);
        lookup("a", "zero.example.com", 5, 0);
        assert_eq!(asked.get(), 7);
    }

    #[test]
    fn holds_only_live_addresses_of_allowed_names_of_the_environment() {
        let cache = Cache::default();
        let t0 = Instant::now();
        let addr = IpAddr::from([192, 0, 2, 7]);
        cache.lookup("a", "Www.example.com", t0, |_| Found {
            addrs: vec![addr],
            ttl: 30,
        });
        let any = |_: &str| true;
        assert!(cache.holds("a", addr, t0, any));
        assert!(!cache.holds("a", IpAddr::from([192, 0, 2, 8]), t0, any));
        assert!(!cache.holds("b", addr, t0, any), "another environment's");
        assert!(
            !cache.holds("a", addr, t0 + Duration::from_secs(30), any),
            "expired"
        );
        assert!(cache.holds("a", addr, t0, |n| n == "www.example.com"));
        assert!(
            !cache.holds("a", addr, t0, |n| n != "www.example.com"),
            "no longer allowed"
        );
    }

    #[test]
    fn a_name_without_addresses_is_asked_again() {
        let cache = Cache::default();
        let asked = Cell::new(0);
        for _ in 0..2 {
            let got = cache.lookup("a", "nowhere.example", Instant::now(), |_| {
                asked.set(asked.get() + 1);
                Found::NOTHING
            });
            assert!(got.is_empty());
        }
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn never_holds_more_than_its_limit() {
        let cache = Cache::default();
        let now = Instant::now();
        let found = || Found {
            addrs: vec![IpAddr::from([192, 0, 2, 1])],
            ttl: 60,
        };
        for i in 0..MAX_NAMES + 10 {
            cache.lookup("a", &format!("n{i}.example"), now, |_| found());
        }
        assert!(cache.names.lock().unwrap().len() <= MAX_NAMES);
    }
}
