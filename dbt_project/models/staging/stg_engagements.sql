{% if source_enabled('engagements', 'use_engagements') %}
{{ require_columns('engagements', ['customer_id', 'engaged_at', 'category']) }}

with source as (
    select * from {{ source('raw', 'engagements') }}
),

renamed as (
    select
        cast(customer_id as bigint) as customer_id,
        cast(engaged_at as timestamp) as engaged_at,
        cast(category as varchar) as category
    from source
)

select * from renamed
{% else %}
-- Optional source absent (var use_engagements): an empty relation with the same columns.
select
    cast(null as bigint) as customer_id,
    cast(null as timestamp) as engaged_at,
    cast(null as varchar) as category
where 1 = 0
{% endif %}
