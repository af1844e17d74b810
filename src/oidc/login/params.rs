//! The query of a login endpoint, read strictly. RFC 6749 §3.1: "Request and response
//! parameters MUST NOT be included more than once." A parameter given twice is refused
//! rather than resolved by taking the first (or the last): mix-up and login-CSRF attacks
//! live on such confusion between what one component reads and what another does.

use std::borrow::Cow;

/// The decoded `name=value` pairs of a query, in order (`+` as space, as forms encode it).
pub(super) struct Params<'q> {
    pairs: Vec<(Cow<'q, str>, Cow<'q, str>)>,
}

impl<'q> Params<'q> {
    pub fn parse(query: Option<&'q str>) -> Params<'q> {
        let pairs = query
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).collect())
            .unwrap_or_default();
        Params { pairs }
    }

    /// The first name that occurs more than once, among `names` (all names: `None`).
    /// Names are compared after percent-decoding: `st%61te` is `state`.
    pub fn repeated(&self, names: Option<&[&str]>) -> Option<String> {
        let counted = |n: &str| names.is_none_or(|ns| ns.contains(&n));
        self.pairs.iter().enumerate().find_map(|(i, (name, _))| {
            let again = self.pairs[..i].iter().any(|(earlier, _)| earlier == name);
            (again && counted(name)).then(|| name.to_string())
        })
    }

    /// The value of `name`. Call [`Params::repeated`] first: with a repeated name this is
    /// the first value, which must not be believed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_are_found_after_decoding() {
        let p = Params::parse(Some("code=a&state=s&st%61te=t&x=1&x=2"));
        assert_eq!(p.repeated(None).as_deref(), Some("state"));
        assert_eq!(p.repeated(Some(&["code"])), None);
        assert_eq!(p.repeated(Some(&["x"])).as_deref(), Some("x"));
        assert_eq!(p.all("state").collect::<Vec<_>>(), ["s", "t"]);
        assert_eq!(p.get("code"), Some("a"));
    }

    #[test]
    fn single_parameters_and_empty_queries_pass() {
        let p = Params::parse(Some("code=a%2Bb&state=s+t&iss=https%3A%2F%2Fi"));
        assert_eq!(p.repeated(None), None);
        assert_eq!(p.get("code"), Some("a+b"));
        assert_eq!(p.get("state"), Some("s t"));
        assert_eq!(p.get("iss"), Some("https://i"));
        assert_eq!(p.get("error"), None);
        assert_eq!(Params::parse(None).repeated(None), None);
        assert_eq!(Params::parse(Some("")).get("rd"), None);
        // A name without a value is still a name: given twice, it is repeated.
        assert_eq!(
            Params::parse(Some("rd&rd=/x"))
                .repeated(Some(&["rd"]))
                .as_deref(),
            Some("rd")
        );
    }
}
