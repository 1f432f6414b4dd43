//! Twilio's list paging: `PageSize` (1-1000, default 50), `Page`, `PageToken`, and the `meta`
//! object with absolute URLs on this server, which the SDKs' `list()` follows page by page.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::form::Form;

pub struct PageReq {
    pub size: i64,
    pub page: i64,
    /// The first row of the page.
    pub offset: i64,
}

impl PageReq {
    pub fn from(query: &Form) -> Result<PageReq, ApiError> {
        let bad = |what: &str| ApiError::invalid(60306, format!("Invalid parameter: {what}"));
        let size = match query.get("PageSize") {
            None => 50,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| bad("PageSize must be 1 to 1000"))?,
        };
        let page = match query.get("Page") {
            None => 0,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=10_000_000).contains(n))
                .ok_or_else(|| bad("Page must be 0 or more"))?,
        };
        // A PageToken is one this server wrote: "PT" + the offset of the page's first row.
        let offset = match query.get("PageToken") {
            None => page.checked_mul(size).ok_or_else(|| bad("Page is too large"))?,
            Some(token) => token
                .strip_prefix("PT")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad("PageToken is not one this server gave"))?,
        };
        Ok(PageReq { size, page, offset })
    }

    /// The SQL LIMIT: one row more than the page, to tell whether a next page exists.
    pub fn limit(&self) -> i64 {
        self.size + 1
    }

    /// The list body: `{key: items, meta: {...}}`. `rows` holds up to `limit()` items; `filters`
    /// are the query parameters that select the list (kept in every page URL).
    pub fn body(&self, key: &str, mut items: Vec<Value>, list_url: &str, filters: &[(&str, &str)]) -> Value {
        let more = items.len() as i64 > self.size;
        items.truncate(self.size as usize);
        let url = |page: i64, token: Option<i64>| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in filters {
                q.append_pair(k, v);
            }
            q.append_pair("PageSize", &self.size.to_string());
            q.append_pair("Page", &page.to_string());
            if let Some(offset) = token {
                q.append_pair("PageToken", &format!("PT{offset}"));
            }
            format!("{list_url}?{}", q.finish())
        };
        let previous = (self.page > 0).then(|| url(self.page - 1, Some((self.offset - self.size).max(0))));
        let next = more.then(|| url(self.page + 1, Some(self.offset + self.size)));
        json!({
            key: items,
            "meta": {
                "page": self.page,
                "page_size": self.size,
                "first_page_url": url(0, None),
                "previous_page_url": previous,
                "url": url(self.page, (self.offset != self.page * self.size || self.page > 0).then_some(self.offset)),
                "next_page_url": next,
                "key": key,
            }
        })
    }
}
