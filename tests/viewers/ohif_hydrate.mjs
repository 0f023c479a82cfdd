// Hydrate TID 1500 SRs as OHIF 3.13 does when the user answers "Yes" to "track measurements":
// the same Cornerstone3D adapters (@cornerstonejs/adapters 5.6.8, the version OHIF 3.13's
// extension-cornerstone-dicom-sr depends on) and dcmjs, called as OHIF's hydrateStructuredReport
// calls them (extensions/cornerstone-dicom-sr/src/utils/hydrateStructuredReport.ts).
//
// Usage: node ohif_hydrate.mjs SR.dcm [SR.dcm ...] -- IMAGE.dcm [IMAGE.dcm ...]
// The images are the ones the SRs point at (their key slices); they give the image planes that
// OHIF reads from its metadata provider. Prints one JSON object per SR (a list) on stdout:
// {sr, groups, tools: [{toolType, trackingUniqueIdentifier, points, length, unit}],
//  notTracked: [{trackingIdentifier, reason}], errors: [...]}
// and exits 1 when any SR has an error: a group with spatial coordinates that no tool takes,
// a tool OHIF does not map, a point missing or not finite, or a length without its value.
// Groups without spatial coordinates (a TID 1411 group that points at a SEG segment, a TID
// 1501 group of qualitative evaluations) are listed under notTracked: OHIF shows the SEG itself.
import { readFileSync } from 'node:fs';
import dcmjs from 'dcmjs';
import { metaData, utilities as csUtilities } from '@cornerstonejs/core';
import { adaptersSR } from '@cornerstonejs/adapters';

const { MeasurementReport } = adaptersSR.Cornerstone3D;
// The annotation types OHIF 3.13 maps from Cornerstone3D tools to its measurement service
// (extensions/cornerstone/src/utils/measurementServiceMappings): a hydrated tool of another
// type is dropped by OHIF.
const OHIF_MAPPED_TOOLS = new Set([
  'Length', 'Bidirectional', 'EllipticalROI', 'CircleROI', 'ArrowAnnotate', 'Angle',
  'CobbAngle', 'RectangleROI', 'PlanarFreehandROI', 'SplineROI', 'LivewireContour', 'Probe',
  'UltrasoundDirectionalTool',
]);
const POINTS_PER_TOOL = { Length: 2, RectangleROI: 4 };

function readDataset(path) {
  const bytes = readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicomData = dcmjs.data.DicomMessage.readFile(buffer);
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomData.dict);
}

const toArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
const codeValue = (item) => toArray(item.ConceptNameCodeSequence)[0]?.CodeValue;

function hasSpatialCoordinates(item) {
  return toArray(item.ContentSequence).some(
    (child) => child.ValueType === 'SCOORD' || child.ValueType === 'SCOORD3D'
      || hasSpatialCoordinates(child),
  );
}

function imagePlaneModule(image) {
  const orientation = image.ImageOrientationPatient.map(Number);
  const spacing = image.PixelSpacing.map(Number);
  return {
    frameOfReferenceUID: image.FrameOfReferenceUID,
    rows: image.Rows,
    columns: image.Columns,
    imagePositionPatient: image.ImagePositionPatient.map(Number),
    rowCosines: orientation.slice(0, 3),
    columnCosines: orientation.slice(3, 6),
    // as Cornerstone's own metadata providers fill it
    rowPixelSpacing: spacing[0],
    columnPixelSpacing: spacing[1],
  };
}

function hydrate(srPath, planes, imageIds) {
  const dataset = readDataset(srPath);
  const errors = [];
  const imaging = toArray(dataset.ContentSequence).find((i) => codeValue(i) === '126010');
  const groups = toArray(imaging?.ContentSequence).filter((i) => codeValue(i) === '125007');
  const failed = [];
  const warn = console.warn;
  const log = console.log;
  console.log = () => {}; // generateToolState logs every measurement it builds
  console.warn = (message, group, error) => {
    failed.push({ message: String(message), group, error: String(error?.stack ?? error) });
  };
  let toolState;
  try {
    toolState = MeasurementReport.generateToolState(dataset, imageIds, metaData);
  } finally {
    console.warn = warn;
    console.log = log;
  }
  const notTracked = [];
  for (const { message, group, error } of failed) {
    const items = toArray(group?.ContentSequence);
    const trackingIdentifier = items.find((i) => codeValue(i) === '112039')?.TextValue;
    if (group && !hasSpatialCoordinates(group)) {
      notTracked.push({ trackingIdentifier, reason: error.split('\n')[0] });
    } else {
      errors.push(`group ${trackingIdentifier}: ${message} ${error}`);
    }
  }
  // generateToolState skips a group for which no adapter matches without a word
  const hydrated = Object.values(toolState).reduce((n, list) => n + list.length, 0);
  const spatial = groups.filter(hasSpatialCoordinates).length;
  const failedSpatial = failed.filter(({ group }) => group && hasSpatialCoordinates(group)).length;
  if (hydrated + failedSpatial < spatial) {
    errors.push(`${spatial - hydrated - failedSpatial} group(s) with coordinates that no tool takes`);
  }
  const tools = [];
  for (const [toolType, measurements] of Object.entries(toolState)) {
    if (!OHIF_MAPPED_TOOLS.has(toolType)) {
      errors.push(`${measurements.length} group(s) hydrated as ${toolType}, which OHIF does not map`);
      continue;
    }
    for (const measurement of measurements) {
      const { data } = measurement.annotation;
      const points = data.handles?.points ?? [];
      const referencedImageId = imageIds[`${measurement.sopInstanceUid}:${data.frameNumber || 1}`];
      const where = `${toolType} of ${measurement.TrackingUniqueIdentifier}`;
      if (!referencedImageId) {
        errors.push(`${where}: image ${measurement.sopInstanceUid} is not among the images given`);
        continue;
      }
      const expected = POINTS_PER_TOOL[toolType];
      if (expected !== undefined && points.length !== expected) {
        errors.push(`${where}: ${points.length} points, ${toolType} needs ${expected}`);
      }
      points.forEach((point, index) => {
        if (!Array.isArray(point) || point.length !== 3 || !point.every(Number.isFinite)) {
          errors.push(`${where}: point ${index} is ${JSON.stringify(point)}`);
        }
      });
      // OHIF's next step; it threw "reading '0'" on the rectangle with missing corners
      const reference = { referencedImageId, FrameOfReferenceUID: planes[referencedImageId].frameOfReferenceUID };
      try {
        csUtilities.updatePlaneRestriction(points, reference);
      } catch (error) {
        errors.push(`${where}: updatePlaneRestriction: ${error}`);
      }
      const stats = data.cachedStats?.[`imageId:${referencedImageId}`] ?? {};
      if (toolType === 'Length' && !(Number(stats.length) > 0 && stats.unit)) {
        errors.push(`${where}: length ${stats.length} ${stats.unit}`);
      }
      tools.push({
        toolType,
        trackingUniqueIdentifier: measurement.TrackingUniqueIdentifier,
        sopInstanceUid: measurement.sopInstanceUid,
        points,
        length: stats.length === undefined ? null : Number(stats.length),
        unit: stats.unit ?? null,
      });
    }
  }
  return { sr: srPath, groups: groups.length, tools, notTracked, errors };
}

const args = process.argv.slice(2);
const split = args.indexOf('--');
if (split < 1) {
  console.error('usage: node ohif_hydrate.mjs SR.dcm [SR.dcm ...] -- IMAGE.dcm [IMAGE.dcm ...]');
  process.exit(2);
}
const planes = {};
const imageIds = {};
for (const path of args.slice(split + 1)) {
  const image = readDataset(path);
  const imageId = `lungnode:${image.SOPInstanceUID}`;
  planes[imageId] = imagePlaneModule(image);
  imageIds[`${image.SOPInstanceUID}:1`] = imageId;
}
metaData.addProvider((type, imageId) => (type === 'imagePlaneModule' ? planes[imageId] : undefined), 10000);
const reports = args.slice(0, split).map((path) => hydrate(path, planes, imageIds));
process.stdout.write(JSON.stringify(reports, null, 1));
process.exit(reports.some((r) => r.errors.length) ? 1 : 0);
