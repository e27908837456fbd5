//! Braze instances and the REST hosts of their partner API. Outbound requests go only to these
//! hosts unless the operator allows a custom base URL (for the emulator).

/// Instance ids and their REST base URLs, from Braze's documented instance table.
pub const INSTANCES: &[(&str, &str)] = &[
    ("US-01", "https://rest.iad-01.braze.com"),
    ("US-02", "https://rest.iad-02.braze.com"),
    ("US-03", "https://rest.iad-03.braze.com"),
    ("US-04", "https://rest.iad-04.braze.com"),
    ("US-05", "https://rest.iad-05.braze.com"),
    ("US-06", "https://rest.iad-06.braze.com"),
    ("US-07", "https://rest.iad-07.braze.com"),
    ("US-08", "https://rest.iad-08.braze.com"),
    ("US-10", "https://rest.us-10.braze.com"),
    ("EU-01", "https://rest.fra-01.braze.eu"),
    ("EU-02", "https://rest.fra-02.braze.eu"),
    ("AU-01", "https://rest.au-01.braze.com"),
    ("ID-01", "https://rest.id-01.braze.com"),
    ("JP-01", "https://rest.jp-01.braze.com"),
    ("KR-01", "https://rest.kr-01.braze.com"),
];

/// The instance name a connection records when its base URL was given explicitly.
pub const CUSTOM_INSTANCE: &str = "custom";

/// Returns the REST base URL of an instance id, matched without regard to case.
pub fn base_url(instance: &str) -> Option<&'static str> {
    INSTANCES
        .iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(instance))
        .map(|(_, url)| *url)
}

pub fn instance_ids() -> Vec<&'static str> {
    INSTANCES.iter().map(|(id, _)| *id).collect()
}

/// Checks whether a base URL is on Braze's EU hosts, which take the EU partner API key.
pub fn is_eu(base_url: &str) -> bool {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|url| url.host_str().map(|h| h.to_ascii_lowercase()))
        .is_some_and(|host| host.ends_with(".braze.eu"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instances_resolve() {
        assert_eq!(base_url("US-01"), Some("https://rest.iad-01.braze.com"));
        assert_eq!(base_url("us-10"), Some("https://rest.us-10.braze.com"));
        assert_eq!(base_url("EU-02"), Some("https://rest.fra-02.braze.eu"));
        assert_eq!(base_url("KR-01"), Some("https://rest.kr-01.braze.com"));
        assert_eq!(base_url("US-09"), None);
    }

    #[test]
    fn eu_hosts_are_detected() {
        assert!(is_eu("https://rest.fra-01.braze.eu"));
        assert!(!is_eu("https://rest.iad-01.braze.com"));
        assert!(!is_eu("http://127.0.0.1:9090"));
        assert!(!is_eu("https://braze.eu.example.com"));
    }
}
