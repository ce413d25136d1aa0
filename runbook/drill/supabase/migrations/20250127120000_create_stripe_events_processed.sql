-- Stripe events the webhook handler has processed: each event id is processed once.
create table public.stripe_events_processed (
  id text primary key check (id like 'evt_%'),
  type text not null,
  processed_at timestamptz not null default now()
);

create index stripe_events_processed_processed_at_idx on public.stripe_events_processed (processed_at);
