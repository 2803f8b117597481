//! DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 for the Storage Service Class).
//!
//! A status is a `u16` carried in Status (0000,0900) of every response command.
//! The constants below are the values this node sends or interprets; [`StatusKind`]
//! classifies any value into the categories of PS3.7 C.1.

/// Success (PS3.7 C.1.1).
pub const SUCCESS: u16 = 0x0000;
/// Warning: Coercion of Data Elements (PS3.4 Table B.2-1).
pub const WARNING_COERCION_OF_DATA_ELEMENTS: u16 = 0xB000;
/// Warning: Data Set does not match SOP Class (PS3.4 Table B.2-1).
pub const WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xB007;
/// Warning: Elements Discarded (PS3.4 Table B.2-1).
pub const WARNING_ELEMENTS_DISCARDED: u16 = 0xB006;
/// Warning: Attribute list error (PS3.7 C.4.2).
pub const WARNING_ATTRIBUTE_LIST_ERROR: u16 = 0x0107;
/// Warning: Attribute Value out of range (PS3.7 C.4.3).
pub const WARNING_ATTRIBUTE_VALUE_OUT_OF_RANGE: u16 = 0x0116;
/// Refused: Out of Resources (PS3.4 Table B.2-1, A7xx family).
pub const REFUSED_OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: Data Set does not match SOP Class (PS3.4 Table B.2-1, A9xx family).
pub const ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
/// Error: Cannot understand (PS3.4 Table B.2-1, Cxxx family).
pub const ERROR_CANNOT_UNDERSTAND: u16 = 0xC000;
/// Refused: SOP Class not supported (PS3.7 C.5.20).
pub const REFUSED_SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Failure: Unrecognized Operation (PS3.7 C.5.21).
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Failure: Mistyped argument (PS3.7 C.5.9).
pub const MISTYPED_ARGUMENT: u16 = 0x0212;
/// Failure: Duplicate invocation (PS3.7 C.5.5).
pub const DUPLICATE_INVOCATION: u16 = 0x0210;
/// Refused: Not authorized (PS3.7 C.5.23).
pub const REFUSED_NOT_AUTHORIZED: u16 = 0x0124;
/// Failure: Processing failure (PS3.7 C.5.14).
pub const PROCESSING_FAILURE: u16 = 0x0110;
/// Cancel (PS3.7 C.3).
pub const CANCEL: u16 = 0xFE00;
/// Pending (PS3.7 C.2), first of the pending codes.
pub const PENDING: u16 = 0xFF00;
/// Pending with warnings for optional keys (PS3.4 C.4.1.1.4).
pub const PENDING_WARNING: u16 = 0xFF01;

/// Category of a DIMSE status value (PS3.7 C.1 – C.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// 0000.
    Success,
    /// 0001, Bxxx, 0107, 0116: the operation was performed, with a caveat.
    Warning,
    /// FE00.
    Cancel,
    /// FF00, FF01.
    Pending,
    /// Every other value (A7xx, A9xx, Cxxx, 01xx, 02xx, …).
    Failure,
}

impl StatusKind {
    /// Classify `status` (PS3.7 Annex C).
    pub fn of(status: u16) -> StatusKind {
        match status {
            SUCCESS => StatusKind::Success,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusKind::Warning,
            CANCEL => StatusKind::Cancel,
            PENDING | PENDING_WARNING => StatusKind::Pending,
            _ => StatusKind::Failure,
        }
    }

    /// `true` for success and warning: the SCP has performed the operation
    /// (for C-STORE: it has taken responsibility for the instance).
    pub fn is_completed(self) -> bool {
        matches!(self, StatusKind::Success | StatusKind::Warning)
    }
}

/// A short human-readable meaning of `status` for logs and dead-letter reasons.
pub fn describe(status: u16) -> &'static str {
    match status {
        SUCCESS => "Success",
        WARNING_COERCION_OF_DATA_ELEMENTS => "Warning: Coercion of Data Elements",
        WARNING_DATA_SET_DOES_NOT_MATCH_SOP_CLASS => "Warning: Data Set does not match SOP Class",
        WARNING_ELEMENTS_DISCARDED => "Warning: Elements Discarded",
        WARNING_ATTRIBUTE_LIST_ERROR => "Warning: Attribute list error",
        WARNING_ATTRIBUTE_VALUE_OUT_OF_RANGE => "Warning: Attribute Value out of range",
        0xA700..=0xA7FF => "Refused: Out of Resources",
        0xA900..=0xA9FF => "Error: Data Set does not match SOP Class",
        0xC000..=0xCFFF => "Error: Cannot understand",
        REFUSED_SOP_CLASS_NOT_SUPPORTED => "Refused: SOP Class not supported",
        UNRECOGNIZED_OPERATION => "Failure: Unrecognized Operation",
        MISTYPED_ARGUMENT => "Failure: Mistyped argument",
        DUPLICATE_INVOCATION => "Failure: Duplicate invocation",
        REFUSED_NOT_AUTHORIZED => "Refused: Not authorized",
        PROCESSING_FAILURE => "Failure: Processing failure",
        CANCEL => "Cancel",
        PENDING | PENDING_WARNING => "Pending",
        _ => match StatusKind::of(status) {
            StatusKind::Warning => "Warning",
            _ => "Failure",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_ps3_7_annex_c() {
        assert_eq!(StatusKind::of(0x0000), StatusKind::Success);
        assert_eq!(StatusKind::of(0xB007), StatusKind::Warning);
        assert_eq!(StatusKind::of(0x0001), StatusKind::Warning);
        assert_eq!(StatusKind::of(0xA700), StatusKind::Failure);
        assert_eq!(StatusKind::of(0xA900), StatusKind::Failure);
        assert_eq!(StatusKind::of(0xC123), StatusKind::Failure);
        assert_eq!(StatusKind::of(0x0122), StatusKind::Failure);
        assert_eq!(StatusKind::of(0xFF00), StatusKind::Pending);
        assert!(StatusKind::of(0xB000).is_completed());
        assert!(!StatusKind::of(0xA701).is_completed());
        assert_eq!(describe(0xA7FF), "Refused: Out of Resources");
        assert_eq!(describe(0xC005), "Error: Cannot understand");
    }
}
