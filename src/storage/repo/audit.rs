//! The audit log.

use super::*;

/// Writes an audit event; called inside the transaction of the change it records (rule 5).
pub async fn insert_audit(db: &impl ConnectionTrait, event: &AuditEvent) -> Result<(), Error> {
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: Set(event.id),
        organization_id: Set(event.organization_id),
        actor_user_id: Set(event
            .actor_user_id
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default()),
        action: Set(event.action),
        target: Set(event.target.to_string()),
        details: Set(event.details.to_string()),
        create_time: Set(event.create_time.as_micros()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Lists audit events newest first, before a cursor.
pub async fn list_audit(
    db: &impl ConnectionTrait,
    org: OrganizationId,
    before: Option<AuditEventId>,
    limit: u64,
) -> Result<Vec<AuditEvent>, Error> {
    let mut query =
        audit_event::Entity::find().filter(audit_event::Column::OrganizationId.eq(org.as_uuid()));
    if let Some(before) = before {
        query = query.filter(audit_event::Column::Id.lt(before.as_uuid()));
    }
    let rows = query.order_by_desc(audit_event::Column::Id).limit(limit).all(db).await?;
    rows.into_iter()
        .map(|m| {
            Ok(AuditEvent {
                id: m.id,
                organization_id: m.organization_id,
                actor_user_id: match m.actor_user_id.is_empty() {
                    true => None,
                    false => Some(
                        UserId::parse_owned(m.actor_user_id.clone())
                            .map_err(|_| corrupt("audit actor", &m.actor_user_id))?,
                    ),
                },
                action: m.action,
                target: AuditTarget::from_stored(&m.target)
                    .ok_or_else(|| corrupt("audit target", &m.target))?,
                details: serde_json::from_str(&m.details)
                    .map_err(|_| corrupt("audit details", &m.details))?,
                create_time: Timestamp::from_micros(m.create_time),
            })
        })
        .collect()
}
