//! DIMSE layer on top of `dicom-ul` (which stops at PDUs): command sets, status codes,
//! message reassembly from PDV fragments and fragmentation for sending.
//!
//! Shared by [`crate::receive`] (C-ECHO / C-STORE SCP) and [`crate::send`] (C-STORE SCU).
//!
//! - [`command`]: [`CommandSet`] encode/decode, Implicit VR Little Endian (PS3.7 9.3, E.1).
//! - [`status`]: DIMSE status codes and their classes (PS3.7 Annex C, PS3.4 B.2.3).
//! - [`message`]: [`MessageAssembler`] and [`message_pdus`] (PS3.8 9.3.5, Annex E).
//! - [`io`]: read/send whole messages over async and sync associations.

pub mod command;
pub mod io;
pub mod message;
pub mod status;

pub use command::CommandSet;
pub use io::{read_message, read_message_async, read_message_async_observed, send_message, send_message_async, AssociationEvent};
pub use message::{message_pdus, DimseMessage, MessageAssembler};

/// Errors of the DIMSE layer.
#[derive(Debug, thiserror::Error)]
pub enum DimseError {
    /// The command set bytes are not a valid Implicit VR Little Endian data set, or an element
    /// has an unusable value.
    #[error("cannot decode DIMSE command set: {message}")]
    CommandDecode {
        /// What went wrong, with the element where known.
        message: String,
    },
    /// A required command element is absent (PS3.7 9.3).
    #[error("DIMSE command set lacks {name} {tag}")]
    MissingCommandElement {
        /// Attribute keyword.
        name: &'static str,
        /// Its tag.
        tag: dicom_core::Tag,
    },
    /// The command set could not be written.
    #[error("cannot encode DIMSE command set: {message}")]
    CommandEncode {
        /// The writer's message.
        message: String,
    },
    /// The peer broke the PDV / message sequence rules (PS3.8 Annex E, PS3.7 chapter 6).
    #[error("DIMSE protocol violation: {0}")]
    Protocol(String),
    /// Upper-layer failure: transport error, timeout, oversized PDU, connection closed.
    #[error("association: {source}")]
    Association {
        /// dicom-ul's error.
        #[source]
        source: Box<dicom_ul::association::Error>,
    },
}

impl DimseError {
    /// Wrap a dicom-ul association error.
    pub fn association(source: dicom_ul::association::Error) -> Self {
        DimseError::Association { source: Box::new(source) }
    }

    /// `true` if this is a read timeout of the association (idle peer).
    pub fn is_timeout(&self) -> bool {
        matches!(self, DimseError::Association { source } if matches!(**source, dicom_ul::association::Error::Timeout { .. }))
    }

    /// `true` if the peer closed the TCP connection.
    pub fn is_connection_closed(&self) -> bool {
        matches!(self, DimseError::Association { source } if matches!(**source, dicom_ul::association::Error::ConnectionClosed { .. }))
    }
}
