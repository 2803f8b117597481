//! encode stage: DICOM-SEG encoding ([`seg`]) and the stage loop ([`stage`]).
pub mod seg;
pub mod stage;
