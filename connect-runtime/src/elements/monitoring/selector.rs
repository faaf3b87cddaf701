//! Which connections a `MonitorScopeSelector` names, as NSM's API decides it
//! (`Connection.MatchesMonitorScopeSelector`).

use crate::proto::connection::{Connection, MonitorScopeSelector, PathSegment};

/// Whether `selector` names `connection`: an empty selector names every
/// connection; otherwise the connection must belong to one of the selector's
/// network services (if it names any) and its path must hold the selector's
/// segments as one contiguous run (if it names any), an empty name, id or
/// token in a selector segment matching anything.
pub(super) fn selects(selector: &MonitorScopeSelector, connection: &Connection) -> bool {
    let services = &selector.network_services;
    if !services.is_empty() && !services.contains(&connection.network_service) {
        return false;
    }
    let wanted = &selector.path_segments;
    if wanted.is_empty() {
        return true;
    }
    let path = connection
        .path
        .as_ref()
        .map_or(&[][..], |p| &p.path_segments[..]);
    path.windows(wanted.len())
        .any(|run| run.iter().zip(wanted).all(|(have, want)| fits(want, have)))
}

fn fits(want: &PathSegment, have: &PathSegment) -> bool {
    let field = |want: &str, have: &str| want.is_empty() || want == have;
    field(&want.name, &have.name) && field(&want.id, &have.id) && field(&want.token, &have.token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::connection::Path;

    fn segment(name: &str, id: &str) -> PathSegment {
        PathSegment {
            name: name.into(),
            id: id.into(),
            ..Default::default()
        }
    }

    fn connection(service: &str, segments: &[(&str, &str)]) -> Connection {
        Connection {
            network_service: service.into(),
            path: Some(Box::new(Path {
                index: 0,
                path_segments: segments.iter().map(|(n, i)| segment(n, i)).collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn selector(segments: &[(&str, &str)], services: &[&str]) -> MonitorScopeSelector {
        MonitorScopeSelector {
            path_segments: segments.iter().map(|(n, i)| segment(n, i)).collect(),
            network_services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_selector_names_everything() {
        assert!(selects(&selector(&[], &[]), &connection("", &[])));
        assert!(selects(&selector(&[], &[]), &Connection::default()));
    }

    #[test]
    fn segments_match_as_one_contiguous_run_with_wildcards() {
        let conn = connection("ns", &[("nsc", "1"), ("hop", "2"), ("nse", "3")]);
        assert!(selects(&selector(&[("hop", "")], &[]), &conn));
        assert!(selects(&selector(&[("", "2"), ("nse", "")], &[]), &conn));
        assert!(selects(
            &selector(&[("nsc", "1"), ("hop", "2"), ("nse", "3")], &[]),
            &conn
        ));
        assert!(!selects(
            &selector(&[("nsc", "1"), ("nse", "3")], &[]),
            &conn
        ));
        assert!(!selects(&selector(&[("hop", "9")], &[]), &conn));
        let longer = [("nsc", ""), ("hop", ""), ("nse", ""), ("x", "")];
        assert!(!selects(&selector(&longer, &[]), &conn));
        assert!(!selects(
            &selector(&[("hop", "")], &[]),
            &Connection::default()
        ));
    }

    #[test]
    fn tokens_in_a_selector_must_match() {
        let mut conn = connection("ns", &[("hop", "2")]);
        conn.path.as_mut().unwrap().path_segments[0].token = "t".into();
        let mut wanted = selector(&[("hop", "")], &[]);
        wanted.path_segments[0].token = "t".into();
        assert!(selects(&wanted, &conn));
        wanted.path_segments[0].token = "other".into();
        assert!(!selects(&wanted, &conn));
    }

    #[test]
    fn network_services_narrow_as_well() {
        let conn = connection("ns-a", &[("hop", "2")]);
        assert!(selects(&selector(&[], &["ns-b", "ns-a"]), &conn));
        assert!(!selects(&selector(&[], &["ns-b"]), &conn));
        assert!(selects(&selector(&[("hop", "")], &["ns-a"]), &conn));
        assert!(!selects(&selector(&[("hop", "")], &["ns-b"]), &conn));
        assert!(!selects(&selector(&[("other", "")], &["ns-a"]), &conn));
    }
}
