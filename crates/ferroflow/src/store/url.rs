//! What stores show of their URLs: never a credential ([`redact_url`], [`scrub`]).

/// A server URL as messages and logs may show it: without credentials. The user
/// information's password is replaced by `***`, and so is user information without one (a
/// NATS token, `nats://TOKEN@host`); query parameters that carry secrets (`password`,
/// `token`, `secret`, `key`, ...) have their values replaced too. Text that is no URL is
/// returned as it is.
///
/// ```
/// use ferroflow::store::redact_url;
///
/// assert_eq!(redact_url("nats://alice:s3cret@10.0.0.2:4222"), "nats://alice:***@10.0.0.2:4222");
/// assert_eq!(redact_url("nats://t0ken@host"), "nats://***@host");
/// assert_eq!(redact_url("redis://:pw@host/0?password=x&db=1"), "redis://:***@host/0?password=***&db=1");
/// assert_eq!(redact_url("runs.db"), "runs.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `message` with every secret of `url` (its password or token, and secret query values)
/// replaced by `***`: for errors of a client library that may quote the URL it was given.
pub fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redact_url(url));
    for secret in url_secrets(url) {
        if secret.len() >= 3 {
            out = out.replace(&secret, "***");
        }
    }
    out
}

/// The secrets a URL carries: the password (or token) of its user information, and the
/// values of secret query parameters.
fn url_secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else { return Vec::new() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut secrets = Vec::new();
    if let Some((userinfo, _)) = rest[..authority_end].rsplit_once('@') {
        secrets.push(userinfo.split_once(':').map_or(userinfo, |(_, password)| password).to_owned());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && is_secret_param(name)
            {
                secrets.push(value.to_owned());
            }
        }
    }
    secrets
}

/// Whether a URL's query parameter `name` carries a secret.
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "token", "secret", "key", "auth", "cred", "nkey", "jwt"].iter().any(|s| name.contains(s))
}
