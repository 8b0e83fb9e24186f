//! An SSH exec request carries one string that the remote login shell
//! parses again; quoting each word is the only way the remote program sees
//! exactly the argv the user typed.

use super::Error;

/// Joins `argv` into one POSIX shell command line whose words are exactly
/// `argv` once the remote shell has parsed it.
pub(crate) fn quote_argv<S: AsRef<str>>(argv: &[S]) -> Result<String, Error> {
    argv.iter()
        .map(|a| {
            shlex::try_quote(a.as_ref())
                .map(|q| q.into_owned())
                .map_err(|_| Error::Nul(a.as_ref().to_string()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|words| words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real check: `sh` splits the quoted line back into the same argv.
    #[test]
    fn sh_sees_the_exact_argv() {
        let argv = [
            "printf",
            "%s\\n",
            "",
            "two words",
            "it's",
            "$HOME `id` $(id) \\ \"q\"",
            "*",
            "tab\there\nnewline",
            "~",
            "#x",
            "ünï",
            "a=b",
        ];
        let line = quote_argv(&argv).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .current_dir("/")
            .output()
            .unwrap();
        let want: String = argv[2..].iter().map(|a| format!("{a}\n")).collect();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{line}");
    }

    #[test]
    fn nul_is_refused() {
        assert!(matches!(quote_argv(&["a\0b"]), Err(Error::Nul(_))));
    }
}
