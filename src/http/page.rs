//! The status page at `/`: recent jobs (newest first) with state, series, analysis,
//! segments, delivery per destination, errors and the preview image. Plain HTML; the only
//! script is each preview's `onload`, which records the decoded size in `data-natural`
//! (`WxH`) for monitoring and tests. The page reloads itself every 10 s.

use super::jobs::JobStatus;
use super::readiness::Readiness;

/// Escape `s` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Render the page for `ae_title` with `jobs` and the last readiness result.
pub fn render(ae_title: &str, jobs: &[JobStatus], readiness: Option<&Readiness>) -> String {
    let mut h = String::new();
    let ready = match readiness {
        Some(r) if r.ready => format!("ready (checked {})", escape(&r.checked_at)),
        Some(r) => format!(
            "NOT READY (checked {}): {}",
            escape(&r.checked_at),
            r.checks.iter().filter(|c| !c.ok).map(|c| escape(&format!("{}: {}", c.name, c.detail))).collect::<Vec<_>>().join("; ")
        ),
        None => "readiness not checked yet".into(),
    };
    h.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\">\
<title>myonode {ae}</title><style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}}.failed,.delivery_failed{{color:#b00}}\
.done{{color:#070}}img{{max-width:256px;image-rendering:auto}}</style></head><body>\n\
<h1>myonode {ae}</h1><p id=\"readiness\">{ready}</p><p>{n} recent job(s). <a href=\"/api/jobs\">JSON</a> · \
<a href=\"/metrics\">metrics</a></p>\n<table id=\"jobs\"><tr><th>Job</th><th>State</th><th>Modality</th><th>Analysis</th>\
<th>Segments</th><th>Started</th><th>Encoded</th><th>Delivery</th><th>Preview</th></tr>\n",
        ae = escape(ae_title),
        n = jobs.len(),
    ));
    for j in jobs {
        let id = escape(&j.job_id);
        let analysis = j
            .analysis
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(|n| n.as_str())
            .map(escape)
            .unwrap_or_default();
        let delivery: Vec<String> = j
            .deliveries
            .iter()
            .map(|d| {
                let mut s = format!("{} {}: {}", escape(&d.destination), d.object, d.state);
                if let Some(r) = &d.reason {
                    s.push_str(&format!(" ({})", escape(r)));
                }
                s
            })
            .chain(j.errors.iter().map(|e| format!("<span class=\"failed\">{}</span>", escape(e))))
            .collect();
        let preview = if j.preview {
            format!(
                "<img alt=\"preview of {id}\" src=\"/api/jobs/{id}/preview.png\" \
onload=\"this.dataset.natural=this.naturalWidth+'x'+this.naturalHeight\">"
            )
        } else {
            String::new()
        };
        h.push_str(&format!(
            "<tr class=\"job\" data-job-id=\"{id}\"><td><a href=\"/api/jobs/{id}\">{id}</a></td><td class=\"{st}\">{st}</td>\
<td>{m}</td><td>{analysis}</td><td>{segs}</td><td>{started}</td><td>{encoded}</td><td>{delivery}</td><td>{preview}</td></tr>\n",
            st = j.state.as_str(),
            m = escape(j.modality.as_deref().unwrap_or("")),
            segs = j.segments.iter().map(|s| escape(s)).collect::<Vec<_>>().join(", "),
            started = escape(j.times.started.as_deref().unwrap_or("")),
            encoded = escape(j.times.encoded.as_deref().unwrap_or("")),
            delivery = delivery.join("<br>"),
        ));
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(super::escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }
}
