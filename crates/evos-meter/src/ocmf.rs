//! OCMF (Open Charge Metering Format) records. Being written.
