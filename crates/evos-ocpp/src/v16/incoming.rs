//! CSMS → station CALLs of OCPP 1.6 (§5) and how the station answers them.
//!
//! A payload is decoded into its generated type first; a decoding error is
//! answered with the CALLERROR its kind calls for (OCPP-J §4.2.3). Handlers
//! that need another service (evse) run in a spawned task and answer
//! through [`Event::Reply`]; the rest answer at once.
//!
//! Firmware Management (GetDiagnostics, UpdateFirmware) and the Security
//! Whitepaper's CSMS-initiated messages are known actions this station does
//! not support yet: NotSupported, never a fake Accepted (ARCHITECTURE.md;
//! OCPP-J §4.2.3 reserves NotImplemented for unknown actions).

use evos_bus::evse::Evse1Proxy;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::rpc::{self, Call, CallError, CallResult, ErrorCode, Frame};
use crate::v16::config_keys::{ChangeResult, Key};
use crate::v16::convert;
use crate::v16::local_auth::{UpdateKind, UpdateStatus};
use crate::v16::messages as m;
use crate::v16::smart_charging::ClearCriteria;
use crate::v16::station::{AuthThen, Done, Event, Pending, Registration, Station};
use crate::wire::CiString;

type Answer = Result<Value, (ErrorCode, String)>;

fn decode<T: DeserializeOwned>(payload: Value) -> Result<T, (ErrorCode, String)> {
    serde_json::from_value(payload).map_err(|e| (rpc::payload_error(&e), e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Answer {
    serde_json::to_value(v).map_err(|e| (ErrorCode::InternalError, e.to_string()))
}

const NOT_SUPPORTED: &[&str] = &[
    "GetDiagnostics",
    "UpdateFirmware",
    "CertificateSigned",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetInstalledCertificateIds",
    "GetLog",
    "InstallCertificate",
    "SignedUpdateFirmware",
];

impl Station {
    /// Answer a CSMS CALL: Some(frame) now, or None when a task will.
    pub(super) async fn on_call(&mut self, call: Call) -> Option<Frame> {
        let Call {
            id,
            action,
            payload,
        } = call;
        tracing::debug!(id, action, "CALL from the CSMS");
        let answer = match self.dispatch(&id, &action, payload) {
            Some(answer) => answer,
            None => return None,
        };
        Some(match answer {
            Ok(payload) => Frame::CallResult(CallResult { id, payload }),
            Err((code, description)) => {
                tracing::warn!(
                    action,
                    code = code.as_str(),
                    "answering with CALLERROR: {description}"
                );
                Frame::CallError(CallError {
                    id,
                    code,
                    description,
                    details: Value::Object(Default::default()),
                })
            }
        })
    }

    fn dispatch(&mut self, id: &str, action: &str, payload: Value) -> Option<Answer> {
        if self.registration == Registration::Rejected {
            // §4.2.1: while rejected the station SHALL NOT respond to
            // CSMS-initiated messages.
            tracing::warn!(id, action, "CALL while the CSMS rejects us: not answered");
            return None;
        }
        macro_rules! run {
            ($handler:ident) => {
                match decode(payload) {
                    Ok(req) => self.$handler(id, req),
                    Err(e) => Some(Err(e)),
                }
            };
        }
        match action {
            "ChangeAvailability" => run!(change_availability),
            "ChangeConfiguration" => run!(change_configuration),
            "ClearCache" => run!(clear_cache),
            "DataTransfer" => run!(data_transfer),
            "GetConfiguration" => run!(get_configuration),
            "RemoteStartTransaction" => run!(remote_start),
            "RemoteStopTransaction" => run!(remote_stop),
            "Reset" => run!(reset),
            "UnlockConnector" => run!(unlock_connector),
            "GetLocalListVersion" => run!(get_local_list_version),
            "SendLocalList" => run!(send_local_list),
            "ReserveNow" => run!(reserve_now),
            "CancelReservation" => run!(cancel_reservation),
            "SetChargingProfile" => run!(set_charging_profile),
            "ClearChargingProfile" => run!(clear_charging_profile),
            "GetCompositeSchedule" => run!(get_composite_schedule),
            "TriggerMessage" => run!(trigger_message),
            a if NOT_SUPPORTED.contains(&a) => Some(Err((
                ErrorCode::NotSupported,
                format!("{a} is not supported by this station yet"),
            ))),
            a if m::is_known_action(a) => Some(Err((
                ErrorCode::NotSupported,
                format!("{a} is sent by a charge point, not to one"),
            ))),
            a => Some(Err((
                ErrorCode::NotImplemented,
                format!("unknown action {a:?}"),
            ))),
        }
    }

    /// Run `job` in a task and answer CALL `id` with its result.
    fn reply_later<F>(&self, id: &str, job: F) -> Option<Answer>
    where
        F: Future<Output = Answer> + Send + 'static,
    {
        let events = self.events.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let result = job.await;
            let _ = events.send(Event::Reply { id, result }).await;
        });
        None
    }

    fn evse_proxies(&self, connector: i32) -> Option<Vec<Evse1Proxy<'static>>> {
        if connector == 0 {
            return Some(self.bus.evse.values().cloned().collect());
        }
        let id = u32::try_from(connector).ok()?;
        self.bus.evse.get(&id).cloned().map(|p| vec![p])
    }

    fn valid_connector(&self, connector: i32) -> Option<u32> {
        u32::try_from(connector)
            .ok()
            .filter(|c| *c >= 1 && self.connectors.contains_key(c))
    }

    // --- Core profile ---------------------------------------------------

    fn change_availability(
        &mut self,
        id: &str,
        req: m::ChangeAvailabilityRequest,
    ) -> Option<Answer> {
        let Some(proxies) = self.evse_proxies(req.connector_id) else {
            return Some(encode(&m::ChangeAvailabilityResponse {
                status: m::AvailabilityStatus::Rejected,
            }));
        };
        let available = req.r#type == m::AvailabilityType::Operative;
        // §5.2: Scheduled when a transaction runs on an affected connector;
        // evse applies it after the session.
        let busy = self.connectors.iter().any(|(c, state)| {
            (req.connector_id == 0 || *c as i32 == req.connector_id) && state.session.is_some()
        });
        self.reply_later(id, async move {
            for p in proxies {
                if let Err(e) = p.set_available(available).await {
                    tracing::warn!("ChangeAvailability: {e}");
                    return encode(&m::ChangeAvailabilityResponse {
                        status: m::AvailabilityStatus::Rejected,
                    });
                }
            }
            encode(&m::ChangeAvailabilityResponse {
                status: if busy {
                    m::AvailabilityStatus::Scheduled
                } else {
                    m::AvailabilityStatus::Accepted
                },
            })
        })
    }

    fn change_configuration(
        &mut self,
        _id: &str,
        req: m::ChangeConfigurationRequest,
    ) -> Option<Answer> {
        let result = self.keys.change(req.key.as_str(), req.value.as_str());
        let status = match result {
            ChangeResult::Accepted => m::ConfigurationStatus::Accepted,
            ChangeResult::Rejected => m::ConfigurationStatus::Rejected,
            ChangeResult::RebootRequired => m::ConfigurationStatus::RebootRequired,
            ChangeResult::NotSupported => m::ConfigurationStatus::NotSupported,
        };
        tracing::info!(key = req.key.as_str(), ?status, "ChangeConfiguration");
        if matches!(result, ChangeResult::Accepted) {
            self.key_changed(req.key.as_str());
        }
        Some(encode(&m::ChangeConfigurationResponse { status }))
    }

    /// Apply a changed key at once (none of ours needs a reboot).
    fn key_changed(&mut self, key: &str) {
        match Key::from_name(key) {
            Some(Key::HeartbeatInterval) => self.schedule_heartbeat(),
            Some(Key::WebSocketPingInterval) => self.link_ping_changed = true,
            Some(Key::AuthorizationKey) => {
                let key = self.keys.string(Key::AuthorizationKey);
                self.set_password(key);
            }
            Some(Key::MeterValueSampleInterval) => self.resample_all(),
            Some(Key::ClockAlignedDataInterval) => self.schedule_aligned(),
            Some(Key::ConnectionTimeOut) => {
                for evse in self.connectors.keys().copied().collect::<Vec<_>>() {
                    self.push_connection_timeout(evse);
                }
            }
            _ => {}
        }
    }

    fn clear_cache(&mut self, _id: &str, _req: m::ClearCacheRequest) -> Option<Answer> {
        self.cache.clear();
        Some(encode(&m::ClearCacheResponse {
            status: m::ClearCacheStatus::Accepted,
        }))
    }

    fn data_transfer(&mut self, _id: &str, req: m::DataTransferRequest) -> Option<Answer> {
        // No vendor extensions are implemented (§5.6: UnknownVendorId).
        tracing::info!(
            vendor = req.vendor_id.as_str(),
            "DataTransfer for an unknown vendor"
        );
        Some(encode(&m::DataTransferResponse {
            status: m::DataTransferStatus::UnknownVendorId,
            data: None,
        }))
    }

    fn get_configuration(&mut self, _id: &str, req: m::GetConfigurationRequest) -> Option<Answer> {
        let keys: Vec<String> = req
            .key
            .unwrap_or_default()
            .into_iter()
            .map(CiString::into_string)
            .collect();
        let max = self.keys.int(Key::GetConfigurationMaxKeys).max(1) as usize;
        if keys.len() > max {
            return Some(Err((
                ErrorCode::PropertyConstraintViolation,
                format!("more than GetConfigurationMaxKeys ({max}) keys asked"),
            )));
        }
        let (known, unknown) = self.keys.get_configuration(&keys);
        let configuration_key = known
            .into_iter()
            .filter_map(|kv| {
                Some(m::KeyValue {
                    key: CiString::new(kv.key).ok()?,
                    readonly: kv.readonly,
                    value: kv.value.and_then(|v| CiString::new(v).ok()),
                })
            })
            .collect::<Vec<_>>();
        let unknown_key = unknown
            .into_iter()
            .filter_map(|k| CiString::new(k).ok())
            .collect::<Vec<_>>();
        Some(encode(&m::GetConfigurationResponse {
            configuration_key: (!configuration_key.is_empty()).then_some(configuration_key),
            unknown_key: (!unknown_key.is_empty()).then_some(unknown_key),
        }))
    }

    fn remote_start(&mut self, _id: &str, req: m::RemoteStartTransactionRequest) -> Option<Answer> {
        let rejected = || {
            encode(&m::RemoteStartTransactionResponse {
                status: m::RemoteStartStopStatus::Rejected,
            })
        };
        // §5.11: without a connector the station picks one; we take the
        // first that is free.
        let evse = match req.connector_id {
            Some(c) => match self.valid_connector(c) {
                Some(c) => c,
                None => return Some(rejected()),
            },
            None => match self.connectors.iter().find(|(_, c)| {
                c.session.is_none() && matches!(c.status.as_str(), "Available" | "Preparing")
            }) {
                Some((id, _)) => *id,
                None => return Some(rejected()),
            },
        };
        // §5.11: a connector that is busy, Unavailable (Inoperative) or
        // Faulted cannot start a transaction.
        if self.connectors.get(&evse).is_none_or(|c| {
            c.session.is_some() || matches!(c.status.as_str(), "Unavailable" | "Faulted")
        }) {
            return Some(rejected());
        }
        // §5.11: only a TxProfile may come with a remote start.
        if let Some(p) = &req.charging_profile
            && p.charging_profile_purpose != m::ChargingProfilePurposeType::TxProfile
        {
            return Some(rejected());
        }
        let tag = req.id_tag.into_string();
        let profile = req.charging_profile.map(Box::new);
        if self.keys.bool(Key::AuthorizeRemoteTxRequests) {
            self.authorize(evse, tag, AuthThen::RemoteStart { evse, profile });
        } else {
            self.start_session(evse, tag, profile);
        }
        Some(encode(&m::RemoteStartTransactionResponse {
            status: m::RemoteStartStopStatus::Accepted,
        }))
    }

    fn remote_stop(&mut self, id: &str, req: m::RemoteStopTransactionRequest) -> Option<Answer> {
        let found = self.connectors.iter().find_map(|(evse, c)| {
            let s = c.session.as_ref()?;
            (self.queue.transaction_id(&s.id) == Some(req.transaction_id as i64)).then_some(*evse)
        });
        let proxy = found.and_then(|evse| self.bus.evse.get(&evse).cloned());
        let Some(proxy) = proxy else {
            return Some(encode(&m::RemoteStopTransactionResponse {
                status: m::RemoteStartStopStatus::Rejected,
            }));
        };
        self.reply_later(id, async move {
            let status = match proxy.stop_session("Remote").await {
                Ok(()) => m::RemoteStartStopStatus::Accepted,
                Err(e) => {
                    tracing::warn!("remote stop: {e}");
                    m::RemoteStartStopStatus::Rejected
                }
            };
            encode(&m::RemoteStopTransactionResponse { status })
        })
    }

    /// §5.14 Reset: accept, end every transaction with the reset's reason,
    /// then restart (soft: the services; hard: the machine).
    fn reset(&mut self, _id: &str, req: m::ResetRequest) -> Option<Answer> {
        let hard = req.r#type == m::ResetType::Hard;
        if self.resetting.is_some() {
            return Some(encode(&m::ResetResponse {
                status: m::ResetStatus::Rejected,
            }));
        }
        self.resetting = Some(hard);
        let reason = if hard { "HardReset" } else { "SoftReset" };
        let active: Vec<Evse1Proxy<'static>> = self
            .connectors
            .iter()
            .filter(|(_, c)| c.session.is_some())
            .filter_map(|(id, _)| self.bus.evse.get(id).cloned())
            .collect();
        let events = self.events.clone();
        let command = if hard {
            self.cfg.reset_hard.clone()
        } else {
            self.cfg.reset_soft.clone()
        };
        tracing::warn!(hard, sessions = active.len(), "reset requested by the CSMS");
        tokio::spawn(async move {
            for p in &active {
                if let Err(e) = p.stop_session(reason).await {
                    tracing::warn!("reset: cannot stop a session: {e}");
                }
            }
            let _ = events
                .send(Event::Done(Done::ResetStopsSent { hard, command }))
                .await;
        });
        Some(encode(&m::ResetResponse {
            status: m::ResetStatus::Accepted,
        }))
    }

    fn unlock_connector(&mut self, id: &str, req: m::UnlockConnectorRequest) -> Option<Answer> {
        let Some(proxy) = self
            .valid_connector(req.connector_id)
            .and_then(|c| self.bus.evse.get(&c).cloned())
        else {
            return Some(encode(&m::UnlockConnectorResponse {
                status: m::UnlockStatus::NotSupported,
            }));
        };
        self.reply_later(id, async move {
            let status = match proxy.unlock().await.as_deref() {
                // Evse1 answers with the UnlockStatus names.
                Ok(status) => status.parse().unwrap_or(m::UnlockStatus::UnlockFailed),
                Err(e) => {
                    tracing::warn!("unlock: {e}");
                    m::UnlockStatus::UnlockFailed
                }
            };
            encode(&m::UnlockConnectorResponse { status })
        })
    }

    // --- Local Auth List Management --------------------------------------

    fn get_local_list_version(
        &mut self,
        _id: &str,
        _req: m::GetLocalListVersionRequest,
    ) -> Option<Answer> {
        // §5.10: -1 when the local list is not enabled.
        let list_version = if self.keys.bool(Key::LocalAuthListEnabled) {
            self.list.version()
        } else {
            -1
        };
        Some(encode(&m::GetLocalListVersionResponse { list_version }))
    }

    fn send_local_list(&mut self, _id: &str, req: m::SendLocalListRequest) -> Option<Answer> {
        let status = if !self.keys.bool(Key::LocalAuthListEnabled) {
            m::UpdateStatus::NotSupported
        } else {
            let max = self.keys.int(Key::SendLocalListMaxLength).max(0) as usize;
            let entries = req.local_authorization_list.unwrap_or_default();
            if entries.len() > max {
                m::UpdateStatus::Failed
            } else {
                let kind = match req.update_type {
                    m::UpdateType::Full => UpdateKind::Full,
                    m::UpdateType::Differential => UpdateKind::Differential,
                };
                let entries = entries
                    .into_iter()
                    .map(|a| {
                        (
                            a.id_tag.into_string(),
                            a.id_tag_info.as_ref().map(convert::id_tag_info),
                        )
                    })
                    .collect();
                match self.list.update(req.list_version, kind, entries) {
                    UpdateStatus::Accepted => m::UpdateStatus::Accepted,
                    UpdateStatus::Failed => m::UpdateStatus::Failed,
                    UpdateStatus::NotSupported => m::UpdateStatus::NotSupported,
                    UpdateStatus::VersionMismatch => m::UpdateStatus::VersionMismatch,
                }
            }
        };
        tracing::info!(?status, version = req.list_version, "SendLocalList");
        Some(encode(&m::SendLocalListResponse { status }))
    }

    // --- Reservation ----------------------------------------------------

    fn reserve_now(&mut self, id: &str, req: m::ReserveNowRequest) -> Option<Answer> {
        // ReserveConnectorZeroSupported is false: connector 0 is Rejected.
        let Some(proxy) = self
            .valid_connector(req.connector_id)
            .and_then(|c| self.bus.evse.get(&c).cloned())
        else {
            return Some(encode(&m::ReserveNowResponse {
                status: m::ReservationStatus::Rejected,
            }));
        };
        let tag = req.id_tag.into_string();
        let parent = req
            .parent_id_tag
            .map(CiString::into_string)
            .unwrap_or_default();
        let expiry = req.expiry_date.unix_ms();
        let reservation_id = req.reservation_id;
        self.reply_later(id, async move {
            let status = match proxy
                .reserve(reservation_id, &tag, &parent, expiry)
                .await
                .as_deref()
            {
                // Evse1 answers with the ReservationStatus names.
                Ok(status) => status.parse().unwrap_or(m::ReservationStatus::Rejected),
                Err(e) => {
                    tracing::warn!("reserve: {e}");
                    m::ReservationStatus::Rejected
                }
            };
            encode(&m::ReserveNowResponse { status })
        })
    }

    fn cancel_reservation(&mut self, id: &str, req: m::CancelReservationRequest) -> Option<Answer> {
        let proxies: Vec<Evse1Proxy<'static>> = self.bus.evse.values().cloned().collect();
        let reservation_id = req.reservation_id;
        self.reply_later(id, async move {
            for p in proxies {
                if let Ok((held, ..)) = p.reservation().await
                    && held == reservation_id
                {
                    let status = match p.cancel_reservation(reservation_id).await {
                        Ok(()) => m::CancelReservationStatus::Accepted,
                        Err(_) => m::CancelReservationStatus::Rejected,
                    };
                    return encode(&m::CancelReservationResponse { status });
                }
            }
            encode(&m::CancelReservationResponse {
                status: m::CancelReservationStatus::Rejected,
            })
        })
    }

    // --- Smart Charging ---------------------------------------------------

    fn set_charging_profile(
        &mut self,
        id: &str,
        req: m::SetChargingProfileRequest,
    ) -> Option<Answer> {
        let reply = |status| encode(&m::SetChargingProfileResponse { status });
        let Ok(connector) = u32::try_from(req.connector_id) else {
            return Some(reply(m::ChargingProfileStatus::Rejected));
        };
        if connector != 0 && !self.connectors.contains_key(&connector) {
            return Some(reply(m::ChargingProfileStatus::Rejected));
        }
        let profile = match convert::profile(&req.cs_charging_profiles) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!("SetChargingProfile rejected: {why}");
                return Some(reply(m::ChargingProfileStatus::Rejected));
            }
        };
        let active_tx = self
            .active_tx(connector)
            .map(|(id, _)| id)
            .filter(|id| *id != 0);
        let profile_id = profile.id;
        let save = match self.profiles.set_unsaved(connector, profile, active_tx) {
            Ok(save) => save,
            Err(why) => {
                tracing::warn!("SetChargingProfile rejected: {why}");
                return Some(reply(m::ChargingProfileStatus::Rejected));
            }
        };
        // The new limit goes to evse now; the answer waits for the profile
        // to be on disk, written off the event loop (an fsync on a charger's
        // eMMC can take tens of milliseconds).
        self.push_limits();
        let events = self.events.clone();
        self.reply_later(id, async move {
            match tokio::task::spawn_blocking(move || save.write()).await {
                Ok(Ok(())) => reply(m::ChargingProfileStatus::Accepted),
                failed => {
                    tracing::error!(?failed, "cannot save a charging profile: rejecting it");
                    let _ = events
                        .send(Event::Done(Done::ProfileNotSaved { id: profile_id }))
                        .await;
                    reply(m::ChargingProfileStatus::Rejected)
                }
            }
        })
    }

    fn clear_charging_profile(
        &mut self,
        _id: &str,
        req: m::ClearChargingProfileRequest,
    ) -> Option<Answer> {
        let criteria = ClearCriteria {
            id: req.id,
            connector: req.connector_id.and_then(|c| u32::try_from(c).ok()),
            purpose: req.charging_profile_purpose.map(convert::purpose),
            stack_level: req.stack_level.and_then(|s| u32::try_from(s).ok()),
        };
        let status = if self.profiles.clear(&criteria) {
            self.push_limits();
            m::ClearChargingProfileStatus::Accepted
        } else {
            m::ClearChargingProfileStatus::Unknown
        };
        Some(encode(&m::ClearChargingProfileResponse { status }))
    }

    fn get_composite_schedule(
        &mut self,
        _id: &str,
        req: m::GetCompositeScheduleRequest,
    ) -> Option<Answer> {
        let rejected = || {
            encode(&m::GetCompositeScheduleResponse {
                status: m::GetCompositeScheduleStatus::Rejected,
                connector_id: None,
                schedule_start: None,
                charging_schedule: None,
            })
        };
        let Ok(connector) = u32::try_from(req.connector_id) else {
            return Some(rejected());
        };
        if connector != 0 && !self.connectors.contains_key(&connector) {
            return Some(rejected());
        }
        let Ok(duration) = u32::try_from(req.duration) else {
            return Some(rejected());
        };
        let now = self.clock.now_ms();
        let unit = req.charging_rate_unit.map(convert::rate_unit);
        let tx = self.active_tx(connector);
        let Some(composite) = self.profiles.composite(connector, now, duration, unit, tx) else {
            return Some(rejected());
        };
        let (schedule_start, schedule) = convert::composite(&composite);
        Some(encode(&m::GetCompositeScheduleResponse {
            status: m::GetCompositeScheduleStatus::Accepted,
            connector_id: Some(req.connector_id),
            schedule_start: Some(schedule_start),
            charging_schedule: Some(schedule),
        }))
    }

    // --- Remote Trigger -----------------------------------------------------

    fn trigger_message(&mut self, _id: &str, req: m::TriggerMessageRequest) -> Option<Answer> {
        let reply = |status| encode(&m::TriggerMessageResponse { status });
        let connector = match req.connector_id {
            // Connector 0 is the station itself: as if none was given.
            None | Some(0) => None,
            Some(c) => match self.valid_connector(c) {
                Some(c) => Some(c),
                None => return Some(reply(m::TriggerMessageStatus::Rejected)),
            },
        };
        use m::MessageTrigger as T;
        // §5.17: the triggered message goes out after the response; the
        // pending list is sent only after this answer, in order.
        match req.requested_message {
            T::BootNotification => {
                self.pending.push_back(Pending::Boot);
            }
            T::Heartbeat => self.pending.push_back(Pending::Heartbeat),
            T::StatusNotification => match connector {
                Some(c) => self.pending.push_back(Pending::Status(c)),
                None => {
                    self.pending.push_back(Pending::Status(0));
                    for c in self.connectors.keys().copied().collect::<Vec<_>>() {
                        self.pending.push_back(Pending::Status(c));
                    }
                }
            },
            T::MeterValues => {
                let ids: Vec<u32> = match connector {
                    Some(c) => vec![c],
                    None => self.connectors.keys().copied().collect(),
                };
                for c in ids {
                    self.triggered_meter_values(c);
                }
            }
            T::DiagnosticsStatusNotification => {
                self.pending.push_back(Pending::DiagnosticsStatusIdle)
            }
            T::FirmwareStatusNotification => self.pending.push_back(Pending::FirmwareStatusIdle),
        }
        Some(reply(m::TriggerMessageStatus::Accepted))
    }
}
