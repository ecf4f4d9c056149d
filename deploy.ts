// Copyright the coordinator authors. MIT license.
/**
 * Deno Deploy entry module. Deploy finds crons by evaluating the entry module's top level,
 * so the registration below is unconditional; see the README, "Deno Deploy".
 *
 * @module
 */
import { deployRun, deploySchedule } from "./coordinator.ts";
Deno.cron("coordinator run --all", deploySchedule(), deployRun);
