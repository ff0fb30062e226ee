// The registry's storage account: blobs (layers, manifests, the deployment package), tables
// (repositories, digests, catalog, auth, events) and the events queue. Entra ID only: shared keys
// are disabled, so the app and the Functions host reach it with managed identities; public
// network access is off. Every container, table and queue is created here, and each identity's
// data roles are scoped to the ones it uses: nothing holds a data role on the whole account.

param location string
param name string

@description('Replication: ZRS keeps a zone outage from taking the registry down; GRS/GZRS add a second region.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string

@description('Blob container for layer and manifest bytes (BERTH_BLOB_CONTAINER).')
param registryContainer string

@description('Blob container the Flex Consumption app is deployed from.')
param deploymentContainer string

@description('Prefix of the tables (BERTH_TABLE_PREFIX).')
param tablePrefix string

@description('Days a deleted blob can be restored.')
param softDeleteDays int

@description('The app\'s runtime identity: the registry\'s data and the Functions host\'s own containers.')
param runtimePrincipalId string

@description('The identity the platform writes and reads the deployment package with: that container only.')
param deploymentPrincipalId string

param tags object

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_206: replication is the skuName parameter (main.bicep defaults to Standard_ZRS; tests assert it)
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Disabled'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource registry 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: registryContainer
  properties: {
    publicAccess: 'None'
  }
}

resource deployment 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

// The Functions host's containers under AzureWebJobsStorage (function keys; timer and singleton
// locks), made here so the host needs no right to create containers on the account.
resource hostContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in [
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]: {
  parent: blobService
  name: container
  properties: {
    publicAccess: 'None'
  }
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

var tableNames = [
  '${tablePrefix}repos'
  '${tablePrefix}digests'
  '${tablePrefix}catalog'
  '${tablePrefix}auth'
  '${tablePrefix}events'
]

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tableNames: {
  parent: tableService
  name: table
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

// Events to deliver (storage/events.py); the Functions host adds `<name>-poison` when it gives up.
resource eventsQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in [
  '${tablePrefix}events'
  '${tablePrefix}events-poison'
]: {
  parent: queueService
  name: queue
}]

var roles = {
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
}

// Layers and manifests: read, write, delete in the registry's container only.
resource registryBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, runtimePrincipalId, roles.storageBlobDataContributor)
  scope: registry
  properties: {
    principalId: runtimePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

// Redirected downloads are user-delegation SAS URLs; the key is asked of the account, and a SAS
// grants no more than the identity's own rights on the blob (read, in the registry's container).
resource delegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, runtimePrincipalId, roles.storageBlobDelegator)
  scope: account
  properties: {
    principalId: runtimePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
  }
}

resource hostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (container, i) in [
  'azure-webjobs-hosts'
  'azure-webjobs-secrets'
]: {
  name: guid(hostContainers[i].id, runtimePrincipalId, roles.storageBlobDataContributor)
  scope: hostContainers[i]
  properties: {
    principalId: runtimePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}]

// The package: only the deployment identity, which the registry's code never uses.
resource packageBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deployment.id, deploymentPrincipalId, roles.storageBlobDataContributor)
  scope: deployment
  properties: {
    principalId: deploymentPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

resource tableRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (table, i) in tableNames: {
  name: guid(tables[i].id, runtimePrincipalId, roles.storageTableDataContributor)
  scope: tables[i]
  properties: {
    principalId: runtimePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}]

// The events queue (the app sends, the queue trigger reads) and the host's poison queue.
resource queueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (queue, i) in [
  '${tablePrefix}events'
  '${tablePrefix}events-poison'
]: {
  name: guid(eventsQueues[i].id, runtimePrincipalId, roles.storageQueueDataContributor)
  scope: eventsQueues[i]
  properties: {
    principalId: runtimePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}]

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
