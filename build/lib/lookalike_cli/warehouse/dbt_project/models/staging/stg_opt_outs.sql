{% if source_enabled('opt_outs', 'use_opt_outs') %}
{{ require_columns('opt_outs', ['customer_id']) }}

with source as (
    select * from {{ source('raw', 'opt_outs') }}
),

renamed as (
    select distinct cast(customer_id as bigint) as customer_id
    from source
)

select * from renamed
{% else %}
-- Optional source absent (var use_opt_outs): nobody has opted out.
select cast(null as bigint) as customer_id
where 1 = 0
{% endif %}
