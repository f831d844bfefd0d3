//! Named D-Bus errors shared by every evos interface (`org.evos.Error.*`).

/// An error a service returns over the bus. The D-Bus name is
/// `org.evos.Error.<Variant>`; the string is for humans.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.evos.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// An argument is out of range or malformed (an unknown EVSE id, a bad unit).
    InvalidArgument(String),
    /// The request is valid but not allowed now (e.g. starting on a faulted EVSE).
    NotPermitted(String),
    /// The target is busy with something that excludes the request.
    Busy(String),
    /// The thing asked for does not exist (a session id, a certificate).
    NotFound(String),
    /// The service knows the request but does not support it (yet).
    NotSupported(String),
    /// The request failed for a reason outside the caller's control.
    Failed(String),
}

impl Error {
    /// The D-Bus error name, for logs and `evos ctl` output.
    pub fn dbus_name(&self) -> String {
        use zbus::DBusError as _;
        self.name().to_string()
    }
}

pub type Result<T> = std::result::Result<T, Error>;
