//! Writing a C-STORE data set to the spool while its fragments still arrive.
//!
//! One association is strictly request/response (PS3.7 9.1.1: the SCU sends the next
//! C-STORE-RQ after the C-STORE-RSP of the last one, unless asynchronous operations were
//! negotiated), so everything the SCP does between the last P-DATA-TF fragment of a data set
//! and its C-STORE-RSP adds to the time per instance. Writing the data set into the spool only
//! once it is complete put the page-cache copy and the data's transfer to the device on that
//! path. [`Staging`] instead appends each received fragment to an unnamed spool file
//! ([`crate::spool::Spool::stage_instance`]) as it arrives and starts its writeback early, so
//! what is left after the last fragment is the final `fdatasync` (mostly the device cache
//! flush), the `linkat` and the directory `fsync`.
//!
//! The appends run on the association's async task (between two PDU reads), not on the
//! blocking pool: they are page-cache writes of one PDU (≤ `receive.max_pdu_length`, 47 µs for
//! 128 KiB here) plus a non-waiting writeback start, and a hop to the blocking pool per PDU
//! would cost about as much. Because writeback starts early, dirty pages stay far below the
//! kernel's throttling limits; a device whose queue is congested can still make a
//! `sync_file_range` call wait, holding that tokio worker for its duration.
//!
//! Nothing about acceptance changes: the complete data set is still checked
//! ([`super::store::store_instance_blocking`]) before the file gets its name, and a refused,
//! aborted or incomplete instance leaves only an unnamed inode that is freed when dropped.

use crate::dimse::command::command_field;
use crate::dimse::{CommandSet, MessageAssembler};
use crate::spool::{Spool, StagedInstance};

/// The staged instance of the C-STORE-RQ whose data set an association is receiving.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    current: Option<Staged>,
}

#[derive(Debug)]
struct Staged {
    presentation_context_id: u8,
    message_id: Option<u16>,
    sop_instance_uid: String,
    /// `None`: staging was tried for this message and is not possible (written once complete).
    instance: Option<StagedInstance>,
}

impl Staged {
    fn is_for(&self, pc: u8, command: &CommandSet) -> bool {
        self.presentation_context_id == pc
            && self.message_id == command.message_id
            && Some(self.sop_instance_uid.as_str()) == command.affected_sop_instance_uid.as_deref()
    }
}

/// An accepted presentation context of the association, as [`Staging::observe`] needs it.
pub(crate) struct AcceptedContext<'a> {
    pub id: u8,
    pub abstract_syntax: &'a str,
    pub transfer_syntax: &'a str,
}

impl Staging {
    /// Called after each P-DATA-TF PDU that did not complete a message: if a C-STORE-RQ's data
    /// set is arriving, stage it (first call for that message) and append what arrived since the
    /// last call. A C-STORE-RQ on a context that was not accepted, or whose AffectedSOPClassUID
    /// differs from the context (it will be refused), is not staged.
    pub fn observe(&mut self, spool: &Spool, contexts: &[AcceptedContext<'_>], asm: &MessageAssembler) {
        let Some((pc, command, so_far)) = asm.data_in_progress() else { return };
        if command.command_field != command_field::C_STORE_RQ {
            return;
        }
        if !self.current.as_ref().is_some_and(|s| s.is_for(pc, command)) {
            let (Some(class), Some(instance)) =
                (command.affected_sop_class_uid.as_deref(), command.affected_sop_instance_uid.as_deref())
            else {
                self.current = None;
                return;
            };
            let staged = contexts
                .iter()
                .find(|c| c.id == pc && c.abstract_syntax == class)
                .and_then(|c| spool.stage_instance(class, instance, c.transfer_syntax));
            self.current = Some(Staged {
                presentation_context_id: pc,
                message_id: command.message_id,
                sop_instance_uid: instance.to_string(),
                instance: staged,
            });
        }
        if let Some(staged) = self.current.as_mut().and_then(|s| s.instance.as_mut()) {
            if so_far.len() > staged.data_len() {
                staged.append(&so_far[staged.data_len()..]);
            }
        }
    }

    /// The staged instance of the now complete C-STORE-RQ `command` on context `pc`, with the
    /// rest of `dataset` appended; `None` if it was not staged. Whatever was staged for another
    /// message is dropped (freed).
    pub fn take(&mut self, pc: u8, command: &CommandSet, dataset: Option<&[u8]>) -> Option<StagedInstance> {
        let staged = self.current.take()?;
        if !staged.is_for(pc, command) {
            return None;
        }
        let mut instance = staged.instance?;
        if let Some(dataset) = dataset {
            if dataset.len() > instance.data_len() {
                instance.append(&dataset[instance.data_len()..]);
            }
        }
        Some(instance)
    }
}
