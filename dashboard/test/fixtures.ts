import type { TelemetryReading } from '../src/protocol';

export const VIN_A = 'LOCKSTEPTEST00001';
export const VIN_B = 'LOCKSTEPTEST00002';

/** A reading with every signal set; `transmitted` defaults to speed + position. */
export function reading(vin: string, timestamp: number, extra: Partial<TelemetryReading> = {}): TelemetryReading {
  return {
    timestamp,
    vehicle_vin: vin,
    speed: 50 + (timestamp % 7),
    battery: 80,
    power: 12.5,
    heading: 90,
    latitude: 52.37,
    longitude: 4.89,
    altitude: 3,
    transmitted: ['speed', 'latitude', 'longitude'],
    predicted_fields: ['battery', 'power', 'heading', 'altitude'],
    session_id: '00000000000000aa',
    seq: timestamp,
    ...extra,
  };
}
