-- One row per person: the messaging contract. If a field is not here, it does not exist for messaging.
select
    u.id                               as customer_id,
    lower(trim(u.email))               as email,
    u.first_name,
    s.plan_tier,
    s.status                           as subscription_status,
    s.mrr,
    coalesce(s.mrr, 0) >= 500          as is_vip,
    u.created_at                       as signed_up_at,
    s.trial_ends_on,
    s.seats,
    u.do_not_discount
from app.users u
left join analytics.subscriptions s on s.user_id = u.id
