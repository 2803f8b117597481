//! Routing: which analysis runs on a series, chosen from its header by the
//! configured `[[routes]]` (first match wins), else `segment.analysis`.

use dicom_dictionary_std::tags;

use crate::config::RouteConfig;
use crate::pipeline::messages::SeriesHeader;

/// The analysis chosen for a series and the route that chose it (`None` = the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    pub analysis: &'a str,
    pub route: Option<&'a str>,
}

fn header_text(header: &SeriesHeader, tag: dicom_core::Tag) -> String {
    header
        .dataset
        .element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Does `route` match the series? Every criterion that lists values must match one of them:
/// Modality and BodyPartExamined (0018,0015) equal ignoring case, SeriesDescription
/// (0008,103E) contains the text ignoring case.
pub fn matches(route: &RouteConfig, header: &SeriesHeader) -> bool {
    let eq_any = |values: &[String], v: &str| values.is_empty() || values.iter().any(|x| x.eq_ignore_ascii_case(v));
    let body_part = header_text(header, tags::BODY_PART_EXAMINED);
    let description = header_text(header, tags::SERIES_DESCRIPTION).to_lowercase();
    eq_any(&route.modality, &header.modality)
        && eq_any(&route.body_part_examined, &body_part)
        && (route.series_description_contains.is_empty()
            || route.series_description_contains.iter().any(|s| description.contains(&s.to_lowercase())))
}

/// Choose the analysis for a series: the first matching route, else `default`.
pub fn choose<'a>(routes: &'a [RouteConfig], default: &'a str, header: &SeriesHeader) -> Routed<'a> {
    routes
        .iter()
        .find(|r| matches(r, header))
        .map(|r| Routed { analysis: r.analysis.as_str(), route: Some(r.name.as_str()) })
        .unwrap_or(Routed { analysis: default, route: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::InMemDicomObject;
    use std::sync::Arc;

    fn header(modality: &str, body_part: &str, description: &str) -> SeriesHeader {
        let mut ds = InMemDicomObject::new_empty();
        ds.put(DataElement::new(tags::BODY_PART_EXAMINED, VR::CS, PrimitiveValue::from(body_part)));
        ds.put(DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, PrimitiveValue::from(description)));
        SeriesHeader {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            frame_of_reference_uid: "1.2.4".into(),
            modality: modality.into(),
            dataset: Arc::new(ds),
        }
    }

    fn route(name: &str, analysis: &str, modality: &[&str], body: &[&str], desc: &[&str]) -> RouteConfig {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        RouteConfig {
            name: name.into(),
            analysis: analysis.into(),
            modality: v(modality),
            body_part_examined: v(body),
            series_description_contains: v(desc),
        }
    }

    #[test]
    fn first_matching_route_wins_else_default() {
        let routes = vec![
            route("lspine-mr", "lumbar", &["MR"], &["LSPINE", "SPINE"], &[]),
            route("lumbar-desc", "lumbar2", &["MR"], &[], &["lumbar", "LWS"]),
        ];
        assert_eq!(choose(&routes, "body-mask", &header("MR", "lspine", "")).analysis, "lumbar");
        let r = choose(&routes, "body-mask", &header("MR", "KNEE", "T2 Lumbar sag"));
        assert_eq!((r.analysis, r.route), ("lumbar2", Some("lumbar-desc")));
        // every listed criterion must match: CT spine is not routed
        assert_eq!(choose(&routes, "body-mask", &header("CT", "LSPINE", "lumbar")).route, None);
        assert_eq!(choose(&routes, "body-mask", &header("MR", "KNEE", "DESS sag")).analysis, "body-mask");
    }
}
