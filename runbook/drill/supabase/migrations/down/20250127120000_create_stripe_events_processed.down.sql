-- Down: 20250127120000_create_stripe_events_processed
drop table if exists public.stripe_events_processed;
