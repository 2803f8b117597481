//! Generation of new DICOM UIDs.
//!
//! UIDs are derived from a random UUID under the `2.25` root (PS3.5 B.2,
//! ISO/IEC 9834-8): `2.25.<UUID as an unsigned decimal integer>`, at most 44 characters.

/// A new, globally unique DICOM UID of the form `2.25.<decimal UUID>`.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

#[cfg(test)]
mod tests {
    #[test]
    fn uids_are_valid_and_distinct() {
        let a = super::new_uid();
        let b = super::new_uid();
        assert_ne!(a, b);
        assert!(crate::spool::is_valid_uid(&a), "{a}");
        assert!(a.len() <= 64);
    }
}
